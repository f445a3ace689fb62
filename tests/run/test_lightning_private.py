"""The private Lightning and torchmetrics names that ``run.lightning_private`` relies on.

Each test checks one of them on the installed versions and fails naming it, so an upgrade that
removes or changes one shows here instead of as a wrong run.
"""

from __future__ import annotations

import inspect

import lightning
import pytest
import torch
import torchmetrics
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import DDPStrategy
from torchmetrics import MeanMetric

from advmim_lightning.run import lightning_private

VERSIONS = f"lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}"


def require_method(owner: type, name: str, parameters: list[str]) -> None:
    method = getattr(owner, name, None)
    assert callable(method), f"{owner.__qualname__}.{name} is gone ({VERSIONS})"
    found = list(inspect.signature(method).parameters)
    assert found == parameters, (
        f"{owner.__qualname__}.{name} takes {found}, lightning_private expects {parameters} "
        f"({VERSIONS})"
    )


def require_attribute(instance: object, name: str) -> None:
    assert hasattr(instance, name), (
        f"{type(instance).__qualname__}.{name} is gone ({VERSIONS}); see lightning_private"
    )


def test_lightning_cli_builds_subcommand_parsers_in_prepare_subcommand_parser():
    require_method(
        LightningCLI, "_prepare_subcommand_parser", ["self", "klass", "subcommand", "kwargs"]
    )


def test_lightning_cli_reads_checkpoint_settings_between_two_public_hooks():
    # AdvMIMCLI finds the checkpoint in parse_arguments and puts the stated settings back in
    # before_instantiate_classes, around LightningCLI._parse_ckpt_path.
    source = inspect.getsource(LightningCLI.__init__)
    order = [
        source.find(word)
        for word in (
            "self.parse_arguments(",
            "self._parse_ckpt_path()",
            "self.before_instantiate_classes()",
        )
    ]
    assert -1 not in order and order == sorted(order), (
        "LightningCLI.__init__ no longer calls parse_arguments, _parse_ckpt_path and "
        f"before_instantiate_classes in this order ({VERSIONS})"
    )


def test_wandb_logger_keeps_its_init_arguments_in_wandb_init(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    require_attribute(logger, "_wandb_init")
    assert isinstance(logger._wandb_init, dict), f"WandbLogger._wandb_init is no dict ({VERSIONS})"
    lightning_private.drop_unset_wandb_anonymous(logger)
    assert logger._wandb_init.get("anonymous", "unset") is not None


def test_csv_logger_keeps_its_writer_and_filesystem(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="", version="")
    require_attribute(logger, "_experiment")
    require_attribute(logger, "_fs")
    require_method(ExperimentWriter, "_check_log_dir_exists", ["self"])
    writer = ExperimentWriter(log_dir=str(tmp_path))
    for name in ("_fs", "metrics_keys", "metrics_file_path", "NAME_HPARAMS_FILE"):
        require_attribute(writer, name)


def test_model_checkpoint_private_hooks_and_counters():
    require_method(ModelCheckpoint, "_find_last_checkpoints", ["self", "trainer"])
    require_method(ModelCheckpoint, "_save_checkpoint", ["self", "trainer", "filepath"])
    require_method(
        ModelCheckpoint, "_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]
    )
    require_method(ModelCheckpoint, "_monitor_candidates", ["self", "trainer"])
    callback = ModelCheckpoint()
    require_attribute(callback, "_last_global_step_saved")
    require_attribute(callback, "_last_checkpoint_saved")


def test_lightning_module_keeps_trainer_and_initial_hparams():
    class Tiny(LightningModule):
        def __init__(self, size: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    module = Tiny()
    require_attribute(module, "_trainer")
    require_attribute(module, "_hparams_initial")
    assert not lightning_private.has_trainer(module)
    lightning_private.set_hparams_initial(module, {"size": 3})
    assert module.hparams_initial == {"size": 3}, (
        f"LightningModule.hparams_initial no longer reads _hparams_initial ({VERSIONS})"
    )


def test_lightning_optimizer_has_step_callbacks():
    optimizer = LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    calls = []
    for name in ("_on_before_step", "_on_after_step"):
        require_attribute(optimizer, name)
        setattr(optimizer, name, lambda name=name: calls.append(name))
    lightning_private.count_optimizer_step(optimizer)
    assert calls == ["_on_before_step", "_on_after_step"]


@pytest.mark.parametrize("start_method", ["popen", "spawn"])
def test_ddp_strategy_keeps_its_kwargs_and_start_method(start_method):
    strategy = DDPStrategy(start_method=start_method, find_unused_parameters=True)
    require_attribute(strategy, "_ddp_kwargs")
    require_attribute(strategy, "_start_method")
    assert lightning_private.ddp_kwargs(strategy) == {"find_unused_parameters": True}
    assert lightning_private.ddp_start_method(strategy) == start_method
    assert lightning_private.ddp_kwargs(object()) is None
    assert lightning_private.ddp_start_method(object()) == "popen"


def test_torchmetrics_metric_keeps_its_sync_flags():
    metric = MeanMetric()
    require_attribute(metric, "_to_sync")
    require_attribute(metric, "_should_unsync")
    assert lightning_private.metric_sync_flags(metric) == (metric.sync_on_compute, True)


def test_jsonargparse_keeps_the_subcommands_action_that_lists_a_plain_subcommand():
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(prog="advmim", exit_on_error=False)
    parser.add_subcommands().add_subcommand("fit", LightningArgumentParser())
    lightning_private.list_subcommand(parser, "export", LightningArgumentParser(), "Export.")
    usage = parser.format_usage()
    assert "{fit,export}" in usage, usage
