"""Data: the :class:`AdvMIMDataModule`, its dataset layouts, transforms and samplers.

- :mod:`~advmim_lightning.data.datamodule`: the LightningDataModule.
- :mod:`~advmim_lightning.data.acdc`, :mod:`~advmim_lightning.data.nifti`,
  :mod:`~advmim_lightning.data.phantom`: the three layouts.
- :mod:`~advmim_lightning.data.cases`: case grouping, splits, split files.
- :mod:`~advmim_lightning.data.transforms`: normalisation and SSL4MIS-style augmentation.
- :mod:`~advmim_lightning.data.sampling`: iteration-indexed, rank-sharded sampling.
- :mod:`~advmim_lightning.data.validation`: checks and :class:`DataValidationError`.
- :mod:`~advmim_lightning.data.prepare`: raw ACDC NIfTI to the SSL4MIS h5 layout.
- :mod:`~advmim_lightning.data.synthetic`: tiny ACDC/NIfTI folders for tests and demos.
"""

from __future__ import annotations

from advmim_lightning.data.datamodule import AdvMIMDataModule
from advmim_lightning.data.datasets import unwrap_single_item
from advmim_lightning.data.types import (
    EvalItem,
    LabeledBatch,
    TrainingBatch,
    UnlabeledBatch,
    Volume,
)
from advmim_lightning.data.validation import DataValidationError

__all__ = [
    "AdvMIMDataModule",
    "DataValidationError",
    "EvalItem",
    "LabeledBatch",
    "TrainingBatch",
    "UnlabeledBatch",
    "Volume",
    "unwrap_single_item",
]
