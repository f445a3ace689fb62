"""Every use of a private Lightning (torchmetrics, jsonargparse) name, one function or hook each.

The library needs a few things Lightning offers no public API for: a parser argument for some
subcommands only, the counters a ``ModelCheckpoint`` keeps, the step count of an optimiser
stepped inside a CUDA graph, the settings a DDP strategy was built with. Each such use lives
here, written against **Lightning 2.6** (and torchmetrics 1.9, jsonargparse 4), so an upgrade
has one file to check; ``tests/run/test_lightning_private.py`` fails, naming the API, when one of
them is gone or has changed its signature. Private hooks Lightning calls are overridden in
small base classes that hand over to a method with a public name
(:class:`SubcommandParserHook`, :class:`_CheckpointFileHooks`,
:class:`AppendingExperimentWriter`).
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.parsing import AttributeDict

# --- LightningCLI ---------------------------------------------------------------------------


def _subcommand_parser_hook() -> type:
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class SubcommandParserHook(LightningCLI):
        """LightningCLI whose subcommand parsers can be given arguments of their own.

        Lightning 2.6 builds each subcommand's parser in the private
        ``LightningCLI._prepare_subcommand_parser(klass, subcommand, **kwargs)``; the public
        ``add_arguments_to_parser`` is not told which subcommand it serves.
        """

        def _prepare_subcommand_parser(
            self, klass: type, subcommand: str, **kwargs: Any
        ) -> LightningArgumentParser:
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            self.add_arguments_to_subcommand(parser, subcommand)
            return parser

        def add_arguments_to_subcommand(
            self, parser: LightningArgumentParser, subcommand: str
        ) -> None:
            """Add arguments to the parser of ``subcommand`` only (nothing by default)."""

    SubcommandParserHook.__module__ = __name__
    return SubcommandParserHook


def list_subcommand(parser: Any, name: str, subparser: Any, help_line: str) -> None:
    """Add ``name`` to the subcommands ``parser`` lists in its usage line and ``--help``.

    jsonargparse 4 keeps the action LightningCLI's ``parser.add_subcommands()`` made in the
    private ``ArgumentParser._subcommands_action``; the parser offers no other way to add a
    subcommand after LightningCLI has added its own.
    """
    parser._subcommands_action.add_subcommand(name, subparser, help=help_line)


def __getattr__(name: str) -> Any:
    # The CLI part imports lightning.pytorch.cli (and so jsonargparse) only when the command
    # line asks for it: training code, benchmarks and GPU images without jsonargparse import
    # this file for its other wrappers.
    if name == "SubcommandParserHook":
        hook = _subcommand_parser_hook()
        globals()[name] = hook
        return hook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- loggers --------------------------------------------------------------------------------


def drop_unset_wandb_anonymous(logger: Any) -> None:
    """Leave the unset ``anonymous`` setting out of the ``wandb.init`` arguments.

    Lightning 2.6's ``WandbLogger`` keeps them in the private dict ``_wandb_init`` and passes
    ``anonymous=None``, which wandb (0.31) answers with "The anonymous setting has no effect" on
    every run.
    """
    if logger._wandb_init.get("anonymous", "") is None:
        del logger._wandb_init["anonymous"]


class AppendingExperimentWriter(ExperimentWriter):
    """CSV writer that continues an existing ``metrics.csv`` (its header) instead of deleting it.

    Overrides the private ``_check_log_dir_exists()`` of Lightning 2.6 (``lightning.fabric``'s
    ``_ExperimentWriter``), which removes the file, and reads it through the writer's private
    filesystem ``_fs``.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))


def csv_logger_experiment(logger: CSVLogger, make_writer: Callable[[], ExperimentWriter]) -> Any:
    """The ``CSVLogger``'s writer, made by ``make_writer`` on first use.

    Lightning 2.6 keeps it in the private ``CSVLogger._experiment`` and creates the folder
    through the private filesystem ``_fs``; the public ``experiment`` property offers no way to
    choose the writer class.
    """
    if logger._experiment is None:
        logger._fs.makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = make_writer()
    return logger._experiment


# --- ModelCheckpoint ------------------------------------------------------------------------


class _CheckpointFileHooks(ModelCheckpoint):
    """``ModelCheckpoint`` whose private file hooks hand over to methods with public names.

    Written against Lightning 2.6's ``ModelCheckpoint``: the hooks ``_find_last_checkpoints``
    and ``_save_checkpoint``, the method ``_save_last_checkpoint`` (with
    ``_monitor_candidates``) and the counters ``_last_global_step_saved`` and
    ``_last_checkpoint_saved``.
    """

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        return self.last_checkpoint_files(trainer)

    def last_checkpoint_files(self, trainer: pl.Trainer) -> set[str]:
        """The ``last*.ckpt`` files Lightning considers this run's (its own search)."""
        return set(super()._find_last_checkpoints(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.write_checkpoint_file(trainer, filepath)

    def write_checkpoint_file(self, trainer: pl.Trainer, filepath: str) -> None:
        """Write one checkpoint file (Lightning's own saving by default)."""
        super()._save_checkpoint(trainer, filepath)

    def save_last_checkpoint_now(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` now, with the current monitored values."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def last_step_saved(self) -> int:
        """The global step of the last checkpoint written (Lightning skips saving it again)."""
        return self._last_global_step_saved

    @last_step_saved.setter
    def last_step_saved(self, step: int) -> None:
        self._last_global_step_saved = step

    def record_saved_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Note that ``filepath`` was written at the current step, as Lightning does."""
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


# --- LightningModule, optimisers, strategies --------------------------------------------------


def has_trainer(module: pl.LightningModule) -> bool:
    """Whether ``module`` is attached to a ``Trainer``.

    Reads Lightning 2.6's private ``LightningModule._trainer``: the public ``trainer`` property
    raises ``RuntimeError`` when none is attached, and catching that on every call costs more.
    """
    return module._trainer is not None


def set_hparams_initial(module: pl.LightningModule, hparams: Mapping[str, Any]) -> None:
    """Make ``hparams`` (copied) what ``module.hparams_initial`` returns and loggers record.

    Lightning 2.6 stores it in the private ``LightningModule._hparams_initial`` (an
    ``AttributeDict``) and has no setter.
    """
    module._hparams_initial = AttributeDict(copy.deepcopy(dict(hparams)))


def count_optimizer_step(optimizer: Any) -> None:
    """Count one step of a ``LightningOptimizer`` stepped outside its ``step()`` (a CUDA graph).

    Runs the private ``_on_before_step`` and ``_on_after_step`` callbacks that Lightning 2.6's
    manual optimisation loop installs on each ``LightningOptimizer``; the second advances the
    step count behind ``trainer.global_step``.
    """
    optimizer._on_before_step()
    optimizer._on_after_step()


def ddp_kwargs(strategy: Any) -> dict[str, Any] | None:
    """The keyword arguments a DDP strategy passes to ``DistributedDataParallel``, or None.

    Lightning 2.6's ``DDPStrategy`` keeps them in the private ``_ddp_kwargs``; other
    strategies have none.
    """
    return getattr(strategy, "_ddp_kwargs", None)


def ddp_start_method(strategy: Any) -> str:
    """How a DDP strategy starts its processes (``popen``, ``spawn``, ``fork``, ...).

    Lightning 2.6's ``DDPStrategy`` keeps it in the private ``_start_method``; ``popen`` when
    the strategy has none.
    """
    return getattr(strategy, "_start_method", "popen")


# --- torchmetrics ---------------------------------------------------------------------------


def metric_sync_flags(metric: Any) -> tuple[bool, bool]:
    """``(should_sync, should_unsync)`` as the metric's own ``compute()`` would use them.

    torchmetrics 1.9 keeps them in the private ``Metric._to_sync`` and ``_should_unsync``;
    they are what ``Metric.sync_context`` needs to synchronise a result outside ``compute()``.
    """
    return metric._to_sync, metric._should_unsync


def max_over_ranks(trainer: Any) -> Callable[[Any], Any] | None:
    """A function taking the element-wise max of a tensor over the DDP ranks of ``trainer``
    (``strategy.reduce``), or None for one process (or no trainer)."""
    if trainer is None or trainer.world_size <= 1:
        return None
    strategy = trainer.strategy
    return lambda flags: strategy.reduce(flags, reduce_op="max")
