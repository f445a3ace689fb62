"""Data: the :class:`AdvMIMDataModule`, its data sources, transforms and samplers.

- :mod:`~advmim_lightning.data.datamodule`: the LightningDataModule (setup and evaluation).
- :mod:`~advmim_lightning.data.training`: its training stream (loader, sampler, resuming).
- :mod:`~advmim_lightning.data.source`: the :class:`DataSource` contract every source meets.
- :mod:`~advmim_lightning.data.settings`: the settings the sources and the data module share
  (:class:`SourceSettings`, :class:`PhantomSettings`, ...), declared and checked once.
- :mod:`~advmim_lightning.data.acdc`, :mod:`~advmim_lightning.data.nifti`,
  :mod:`~advmim_lightning.data.phantom_source`: the three built-in sources (layouts);
  :mod:`~advmim_lightning.data.image_folder`: NIfTI images without labels (a second source).
- :mod:`~advmim_lightning.data.unlabeled_source`: the second, unlabeled source (domain
  adaptation): building it, checking it agrees with the main one, the pools it gives.
- :mod:`~advmim_lightning.data.layouts`: ``layout=`` (with ``root``, ``settings``, ``phantom``)
  to a source.
- :mod:`~advmim_lightning.data.arguments`: checks of constructor arguments.
- :mod:`~advmim_lightning.data.cases`: case grouping, splits, split files.
- :mod:`~advmim_lightning.data.transforms`: normalisation and SSL4MIS-style augmentation.
- :mod:`~advmim_lightning.data.sampling`: iteration-indexed, rank-sharded sampling.
- :mod:`~advmim_lightning.data.validation`: checks and :class:`DataValidationError`.
- :mod:`~advmim_lightning.data.prepare`: raw ACDC NIfTI to the SSL4MIS h5 layout.
- :mod:`~advmim_lightning.data.synthetic`: tiny ACDC/NIfTI folders for tests and demos.
"""

from __future__ import annotations

from advmim_lightning.data.acdc import ACDCSource
from advmim_lightning.data.cases import CaseSplit
from advmim_lightning.data.datamodule import AdvMIMDataModule
from advmim_lightning.data.datasets import unwrap_single_item
from advmim_lightning.data.image_folder import ImageFolderSource
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.phantom_source import PhantomSource
from advmim_lightning.data.settings import (
    AugmentationSettings,
    LoaderSettings,
    PhantomSettings,
    SecondPhantomSettings,
    SourceSettings,
)
from advmim_lightning.data.source import DataSource, TrainingPools, pools_from_volumes
from advmim_lightning.data.types import (
    EvalItem,
    LabeledBatch,
    TrainingBatch,
    UnlabeledBatch,
    Volume,
)
from advmim_lightning.data.validation import DataValidationError

__all__ = [
    "ACDCSource",
    "AdvMIMDataModule",
    "AugmentationSettings",
    "CaseSplit",
    "DataSource",
    "DataValidationError",
    "EvalItem",
    "ImageFolderSource",
    "LabeledBatch",
    "LoaderSettings",
    "NiftiSource",
    "PhantomSettings",
    "PhantomSource",
    "SecondPhantomSettings",
    "SourceSettings",
    "TrainingBatch",
    "TrainingPools",
    "UnlabeledBatch",
    "Volume",
    "pools_from_volumes",
    "unwrap_single_item",
]
