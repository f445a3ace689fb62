"""A CSV logger that keeps a run's earlier rows.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` whenever a new logger opens a folder that
already has one, so ``advmim test`` after ``advmim fit`` (or a resume with ``--ckpt_path
last``) would wipe the training curves of the run. :class:`RunCSVLogger` appends instead: it
reads the existing header and adds rows (and columns) to the same file. An evaluation writes its
hyper-parameters to its own file (``test_hparams.yaml``, ...), so the fit's ``hparams.yaml``
stays as the training run left it.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))


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
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
            self._experiment.NAME_HPARAMS_FILE = self.hparams_file
        return self._experiment
