"""``AdvMIMCLI``: the LightningCLI behind ``advmim fit / validate / test / predict``.

It links the data's sizes to the model and its networks, gives every run a folder
``<runs_dir>/<run_name>/`` with its loggers and checkpoints (``--ckpt_path last`` resumes the
named run), holds that folder for one process at a time (:class:`~advmim_lightning.run.folders.
RunFolderLock`), and resolves and checks the checkpoint a subcommand uses before anything runs
(:mod:`advmim_lightning.run.resume`). ``validate``/``test``/``predict`` refuse to run without a
checkpoint unless ``--allow_random_weights true``. An evaluation writes its own
``<subcommand>_config.yaml``, never the fit's ``config.yaml``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException

from advmim_lightning.data import AdvMIMDataModule
from advmim_lightning.evaluation.panels import ValidationPanels
from advmim_lightning.evaluation.prediction_writer import PredictionWriter
from advmim_lightning.method.lightning_module import AdvMIMModule
from advmim_lightning.run import stops
from advmim_lightning.run.folders import (
    RunFolder,
    RunFolderLock,
    launching_process,
    run_file_name,
    settle_run_paths,
)
from advmim_lightning.run.lightning_private import SubcommandParserHook, list_subcommand
from advmim_lightning.run.network_arguments import refuse_a_network_that_failed_to_parse
from advmim_lightning.run.quiet import quiet_known_noise
from advmim_lightning.run.resume import (
    EVALUATION_COMMANDS,
    StoredCheckpoint,
    _gives_own_checkpoint_callback,
    checkpoint_conflict,
    find_run_checkpoint,
    keep_stated_settings,
    stated_model_settings,
)
from advmim_lightning.run.run_checkpoint import RunCheckpoint

#: Plain subcommands beside the LightningCLI ones: the module whose ``main(argv)`` runs each
#: (:func:`advmim_lightning.run.main.main` dispatches them) and its line in ``advmim --help``.
PLAIN_COMMANDS = {
    "export": (
        "advmim_lightning.commands.export",
        "Export one trained network as a plain file that loads without Lightning.",
    ),
    "prepare": (
        "advmim_lightning.data.prepare",
        "Convert the raw ACDC release into the h5 layout the data module reads.",
    ),
    "compare": (
        "advmim_lightning.commands.compare",
        "Train and test methods x labeled cases x seeds; one table and one plot.",
    ),
    "demo": (
        "advmim_lightning.commands.demo",
        "Train, test and predict the quickstart config, then show where things went.",
    ),
}

#: The module's networks and the classes it builds when one is left at ``None``.
DEFAULT_NETWORKS = {
    "cnn": "advmim_lightning.networks.UNet",
    "transformer": "advmim_lightning.networks.SwinUNet",
}

log = logging.getLogger(__name__)


class AdvMIMCLI(SubcommandParserHook):
    """LightningCLI with the library's links between data and model, and run folders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # LightningCLI runs the subcommand inside __init__: the run folder's lock (taken in
        # before_instantiate_classes) is given back when it ends, also on an error.
        self._started = time.time()
        self._run: RunFolder | None = None
        try:
            super().__init__(*args, **kwargs)
            removed = self._run_folder_removed()
        except SIGTERMException as err:
            raise stops.RunStopped(self._stopped_report()) from err
        except Exception as err:
            if not self._run_folder_removed():
                raise
            # whatever wrote next (a checkpoint, metrics.csv, a panel) failed for this reason
            raise OSError(self._removed_report()) from err
        finally:
            self._release_run_folder()
        if removed:  # later writes made the folder again, without what went before
            raise OSError(self._removed_report())

    def _run_folder_removed(self) -> bool:
        """Whether the run folder (or the lock file in it) was deleted while the command ran."""
        if self._run is None:
            return False
        lock = getattr(self, "_lock", None)
        return (lock is not None and lock.removed) or not self._run.path.is_dir()

    def _removed_report(self) -> str:
        return stops.removed_report(self._run.path, self._at_iteration())

    def _stopped_report(self) -> str:
        trainer = getattr(self, "trainer", None)
        return stops.stopped_report(
            self.subcommand or "fit", trainer, self._started, self._at_iteration()
        )

    def _at_iteration(self) -> str:
        """`` at iteration <n>`` of the model being trained, or nothing when unknown."""
        iteration = getattr(getattr(self, "model", None), "iteration", None)
        return "" if iteration is None else f" at iteration {iteration}"

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Lightning's parser, plus ``--version`` and the plain subcommands listed in ``--help``.

        ``advmim export|prepare|compare|demo`` are run by
        :func:`~advmim_lightning.run.main.main` before this parser is built; they are listed
        here (with an empty parser each) so that the usage line and ``--help`` name every
        subcommand.
        """
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        from advmim_lightning import __version__

        self.parser.add_argument(
            "--version",
            action="version",
            version=f"advmim {__version__}",
            help="Print the version (advmim <version>) and exit.",
        )
        if add_subcommands:
            for name, (_, help_line) in PLAIN_COMMANDS.items():
                described = f"{help_line} (`advmim {name} --help`)"
                list_subcommand(self.parser, name, LightningArgumentParser(), described)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="advmim", help="Name of the run and of its folder."
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="Folder that holds one folder per run."
        )
        parser.add_argument(
            "--wandb_mode",
            type=str,
            default="offline",
            choices=["offline", "online", "disabled"],
            help="Weights & Biases: offline (default; `wandb sync` later), online or disabled.",
        )
        parser.add_argument(
            "--wandb_project", type=str, default="advmim-lightning", help="wandb project name."
        )
        parser.add_argument(
            "--checkpoint_every",
            type=NonNegativeInt,
            default=0,
            help=(
                "Also save checkpoints/last.ckpt every this many iterations, so a killed run "
                "loses at most that much work (0: only after validation and at the end)."
            ),
        )
        # Stated once, on the data side, and linked to the model and to networks given by
        # class_path (a network left at its default is built by the module from these).
        parser.link_arguments("data.num_classes", "model.num_classes")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.num_classes", "model.cnn.init_args.num_classes")
        parser.link_arguments("data.num_classes", "model.transformer.init_args.num_classes")
        parser.link_arguments("data.image_size", "model.transformer.init_args.img_size")
        # The channel count is known once the data module has read the dataset (NIfTI:
        # dataset.json), so it is linked at instantiation; networks left at their default are
        # spelled out as class_path specs first (_spell_out_default_networks).
        # (Declared transformer first: jsonargparse then builds the cnn first, the order in
        # which the module builds default networks, so seeded weights do not change.)
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        for network in reversed(DEFAULT_NETWORKS):
            parser.link_arguments(
                "data.in_channels", f"model.{network}.init_args.in_channels", apply_on="instantiate"
            )
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("model.method", "data.require_unlabeled", compute_fn=_needs_unlabeled)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ValidationPanels, "panels")

    def _spell_out_default_networks(self) -> None:
        """Give each network left at ``None`` as its default class with the linked arguments.

        ``AdvMIMModule`` builds a ``None`` network itself from its ``num_classes``,
        ``in_channels`` and ``image_size``; here the same network is stated as a class_path
        spec, so that the data's channel count (linked at instantiation to
        ``model.<network>.init_args.in_channels``) reaches it exactly as it reaches networks
        given by class_path (a link to a ``None`` target cannot be applied).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config["model"]
        for network, class_path in DEFAULT_NETWORKS.items():
            if model.get(network) is not None:
                continue
            # in_channels: a placeholder the data's value replaces at instantiation
            init_args = Namespace(num_classes=model["num_classes"], in_channels=1)
            if network == "transformer":
                init_args["img_size"] = list(model["image_size"])
            model[network] = Namespace(class_path=class_path, init_args=init_args)

    def add_arguments_to_subcommand(self, parser: LightningArgumentParser, subcommand: str) -> None:
        if subcommand in EVALUATION_COMMANDS:
            parser.add_argument(
                "--allow_random_weights",
                type=bool,
                default=False,
                help=(
                    "Run without --ckpt_path, with untrained (randomly initialised) networks, "
                    "on purpose (a smoke test). Off: no checkpoint is an error."
                ),
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, plus the run folder's loggers and checkpoints by default.

        Unless the config says otherwise: ``default_root_dir`` is ``<runs_dir>/<run_name>``,
        the loggers are a CSV logger (``metrics.csv``) and an offline wandb logger in that
        folder, and a ``ModelCheckpoint`` keeps ``checkpoints/last.ckpt`` and the best
        ``val/dice_mean`` there, which is where ``--ckpt_path last`` looks.

        When a subcommand runs, the checkpoint is first checked against the model built
        (:func:`checkpoint_conflict`) before the trainer exists and anything is written. An
        evaluation's config and hyper-parameters go to ``<subcommand>_config.yaml`` and
        ``<subcommand>_hparams.yaml``; the fit's are never rewritten by it.

        Raises:
            ValueError: When the checkpoint does not fit the model built for this run.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand and self._checkpoint is not None:
            conflict = checkpoint_conflict(self._checkpoint, self.model)
            if conflict:
                raise ValueError(conflict)
        self._run = RunFolder.of(config)
        run_dir = self._run.make()
        subcommand = self.subcommand or "fit"
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": run_file_name(subcommand, "config.yaml"),
        }
        trainer_cfg = self.config_init.get(str(self.subcommand), self.config_init).get(
            "trainer", {}
        )
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        if trainer_cfg.get("logger") in (None, True):
            # imported here: the logger classes it imports are then not offered in --help
            from advmim_lightning.run.loggers import default_loggers

            kwargs["logger"] = default_loggers(
                run_dir,
                config["run_name"],
                config["wandb_mode"],
                config["wandb_project"],
                hparams_file=run_file_name(subcommand, "hparams.yaml"),
            )
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        wants_checkpoints = trainer_cfg.get("enable_checkpointing") is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(
                RunCheckpoint(
                    dirpath=self._run.checkpoints,
                    filename="best-{step}",
                    monitor="val/dice_mean",
                    mode="max",
                    save_last=True,
                    every_n_iterations=config["checkpoint_every"],
                    # last.ckpt is always this run's: a resumed run that was moved or copied
                    # (its stored dirpath differs) would otherwise write last-v1.ckpt and
                    # leave the old last.ckpt for the next --ckpt_path last
                    enable_version_counter=False,
                )
            )
        elif config["checkpoint_every"]:
            log.warning(
                "--checkpoint_every %d is ignored: it applies to the run's default checkpoint "
                "callback, and this config gives its own ModelCheckpoint or disables "
                "checkpointing",
                config["checkpoint_every"],
            )
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        """Hold the run folder before anything is built or written (when a subcommand runs).

        The model settings stated for this run are first put back over the checkpoint's
        (:meth:`_keep_stated_settings`). The launching process takes
        :class:`~advmim_lightning.run.folders.RunFolderLock` (DDP workers it starts do not); it is
        released when the command ends, however it ends. Networks left at ``None`` are then
        stated as their default classes (:meth:`_spell_out_default_networks`).
        """
        self._keep_stated_settings()
        if self.subcommand and launching_process():
            run = RunFolder.of(self.config[self.subcommand])
            self._lock = run.lock(f"advmim {self.subcommand}")
        self._spell_out_default_networks()

    def _release_run_folder(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._given_args = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand in self.config else self.config
        for network in DEFAULT_NETWORKS:
            refuse_a_network_that_failed_to_parse(
                network, config, self._given_args, DEFAULT_NETWORKS[network]
            )
        if subcommand in PLAIN_COMMANDS:
            raise ValueError(
                f"advmim {subcommand} is not a Lightning subcommand: run it as `advmim "
                f"{subcommand} ...` or advmim_lightning.run.main.main([{subcommand!r}, ...])"
            )
        settle_run_paths(self.config[subcommand] if subcommand else self.config)
        self._find_checkpoint()

    def _find_checkpoint(self) -> None:
        """Find and check the checkpoint; the model's settings are then taken from it.

        ``--ckpt_path last`` and ``best`` are found in the run folder
        (:func:`find_run_checkpoint`); every checkpoint, found or given, is read with
        ``weights_only=True`` (:func:`~advmim_lightning.run.checkpoints.read_checkpoint`), so a
        missing,
        empty, truncated or foreign file fails with its name before anything runs.
        ``validate``/``test``/``predict`` without a checkpoint fail unless
        ``--allow_random_weights true``.

        LightningCLI then replaces the model settings by those stored in the checkpoint, so
        the weights fit the networks (after :meth:`parse_arguments`, before
        :meth:`before_instantiate_classes`), and :meth:`_keep_stated_settings` follows. The
        settings in :data:`RUNTIME_MODEL_SETTINGS` (evaluation and run length) are put back
        where the config files or the command line state them. A resumed ``fit`` refuses a
        stated setting of :data:`STRUCTURAL_SETTINGS` that differs from the checkpoint's (the
        run would change its method or networks half-way); any other stated setting that
        differs is reported in a warning, never dropped in silence.

        Raises:
            ValueError: Naming the checkpoint or the run folder and what is wrong.
        """
        self._checkpoint: StoredCheckpoint | None = None
        self._lock: RunFolderLock | None = None
        self._settings_before_checkpoint: tuple[str, Path, set[str], Namespace] | None = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        given = config.get("ckpt_path")
        path = find_run_checkpoint(
            subcommand,
            given,
            Path(config["runs_dir"]),
            config["run_name"],
            allow_random_weights=bool(config.get("allow_random_weights", False)),
            own_checkpoint_callback=_gives_own_checkpoint_callback(config),
        )
        config["ckpt_path"] = None if path is None else str(path)
        if path is None:
            if subcommand == "fit" and not (config.get("trainer") or {}).get("fast_dev_run"):
                RunFolder.of(config).refuse_a_second_run()
            return
        from advmim_lightning.run.checkpoints import read_checkpoint

        try:
            self._checkpoint = StoredCheckpoint.of(path, read_checkpoint(path))
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--ckpt_path {given}: {err}") from err
        stated = stated_model_settings(self._given_args)
        before = self.config[subcommand]["model"].clone()
        self._settings_before_checkpoint = (subcommand, path, stated, before)

    def _keep_stated_settings(self) -> None:
        """Put the stated run-time settings back over the checkpoint's, refuse or report others.

        See :meth:`_find_checkpoint`; nothing happens when no checkpoint is loaded.

        Raises:
            ValueError: When a resumed ``fit`` states a structural setting that differs from the
                checkpoint's.
        """
        if self._settings_before_checkpoint is None:
            return
        subcommand, path, stated, before = self._settings_before_checkpoint
        self._settings_before_checkpoint = None
        keep_stated_settings(self.config[subcommand]["model"], subcommand, path, stated, before)


def _needs_unlabeled(method: str) -> bool:
    return method != "supervised"


def build_cli(args: list[str] | None = None, run: bool = True) -> AdvMIMCLI:
    """The LightningCLI object for ``args`` (fit / validate / test / predict).

    Args:
        args: Command-line words, e.g. ``["fit", "-c", "configs/quickstart.yaml"]``;
            ``None`` reads ``sys.argv``.
        run: Run the subcommand (``False``: only parse and instantiate, no subcommand then).

    Returns:
        The CLI; its ``trainer``, ``model`` and ``datamodule`` are useful in tests and notebooks.
    """
    quiet_known_noise()
    return AdvMIMCLI(
        AdvMIMModule,
        AdvMIMDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"max_epochs": -1},
        parser_kwargs={
            "prog": "advmim",
            "description": (
                "AdvMIM semi-supervised segmentation. Subcommands: fit, validate, test, "
                f"predict (Lightning) and {', '.join(PLAIN_COMMANDS)} (see `advmim "
                "<subcommand> --help`)."
            ),
        },
    )
