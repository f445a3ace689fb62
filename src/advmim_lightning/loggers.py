"""A CSV logger that keeps a run's earlier rows.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` whenever a new logger opens a folder that
already has one, so ``advmim test`` after ``advmim fit`` (or a resume with ``--ckpt_path
last``) would wipe the training curves of the run. :class:`RunCSVLogger` appends instead: it
reads the existing header and adds rows (and columns) to the same file.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
