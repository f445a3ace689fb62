"""The run folder's loggers: a CSV logger that keeps earlier rows, and offline wandb.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` whenever a new logger opens a folder that
already has one, so ``advmim test`` after ``advmim fit`` (or a resume with ``--ckpt_path
last``) would wipe the training curves of the run. :class:`RunCSVLogger` appends instead: it
reads the existing header and adds rows (and columns) to the same file. An evaluation writes its
hyper-parameters to its own file (``test_hparams.yaml``, ...), so the fit's ``hparams.yaml``
stays as the training run left it. :func:`default_loggers` are the loggers a run gets when its
config names none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from advmim_lightning.run.lightning_private import (
    AppendingExperimentWriter,
    csv_logger_experiment,
    drop_unset_wandb_anonymous,
)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it.

    Args:
        *args: ``CSVLogger`` arguments.
        hparams_file: File name of the hyper-parameters in the log folder.
        **kwargs: ``CSVLogger`` keyword arguments.
    """

    def __init__(self, *args: Any, hparams_file: str = "hparams.yaml", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hparams_file = hparams_file

    @property
    def experiment(self) -> ExperimentWriter:
        return csv_logger_experiment(self, self._make_writer)

    def _make_writer(self) -> ExperimentWriter:
        writer = AppendingExperimentWriter(log_dir=self.log_dir)
        writer.NAME_HPARAMS_FILE = self.hparams_file
        return writer


def default_loggers(
    run_dir: Path, run_name: str, wandb_mode: str, project: str, hparams_file: str = "hparams.yaml"
) -> list:
    """A run's loggers: :class:`RunCSVLogger` (``metrics.csv``) and, unless ``wandb_mode`` is
    ``disabled``, a ``WandbLogger`` (``offline`` or ``online``), both in ``run_dir``."""
    loggers: list = [
        RunCSVLogger(save_dir=str(run_dir), name="", version="", hparams_file=hparams_file)
    ]
    if wandb_mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        run_dir.mkdir(parents=True, exist_ok=True)
        wandb_logger = WandbLogger(
            name=run_name,
            project=project,
            save_dir=str(run_dir),
            offline=wandb_mode == "offline",
        )
        drop_unset_wandb_anonymous(wandb_logger)
        loggers.append(wandb_logger)
    return loggers
