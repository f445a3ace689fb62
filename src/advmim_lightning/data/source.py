"""What every dataset layout provides to the data module."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from advmim_lightning.data.cases import CaseGrouper, CaseSplit
from advmim_lightning.data.transforms import normalize_volume
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import DataValidationError

__all__ = ["DataSource", "EvalSplit", "LoadOptions", "TrainingPools", "pools_from_volumes"]

EvalSplit = Literal["val", "test", "predict"]


@dataclass(frozen=True)
class LoadOptions:
    """Options shared by every layout (see :class:`~advmim_lightning.data.AdvMIMDataModule`)."""

    num_classes: int
    labeled_cases: int | tuple[str, ...]
    case_pattern: str | None
    split_file: str | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    slice_axis: int | None = None
    normalization: str = "minmax"
    window_level: float = 40.0
    window_width: float = 400.0
    cache_dir: str | None = None

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Normalises a ``C x ...`` volume with these options."""
        return normalize_volume(image, self.normalization, self.window_level, self.window_width)

    @property
    def label_dtype(self) -> type:
        """Smallest unsigned dtype holding every class index."""
        return np.uint8 if self.num_classes <= 256 else np.int32


@dataclass
class TrainingPools:
    """Training volumes and their slices, split into the labeled and unlabeled pools.

    Attributes:
        labeled_volumes: Volumes with labels.
        labeled_slices: ``(index into labeled_volumes, d)`` in dataset order.
        unlabeled_volumes: Volumes whose labels were removed.
        unlabeled_slices: ``(index into unlabeled_volumes, d)`` in dataset order.
    """

    labeled_volumes: list[Volume] = field(default_factory=list)
    labeled_slices: list[tuple[int, int]] = field(default_factory=list)
    unlabeled_volumes: list[Volume] = field(default_factory=list)
    unlabeled_slices: list[tuple[int, int]] = field(default_factory=list)


def pools_from_volumes(volumes: Sequence[Volume], split: CaseSplit) -> TrainingPools:
    """Every slice of the labeled groups' labeled volumes forms the labeled pool; every slice
    of the other training volumes (labels removed) forms the unlabeled pool."""
    labeled_groups, unlabeled_groups = set(split.labeled), set(split.unlabeled)
    pools = TrainingPools()
    for v in volumes:
        if v.group_id in labeled_groups and v.label is not None:
            pools.labeled_slices += [(len(pools.labeled_volumes), d) for d in range(v.num_slices)]
            pools.labeled_volumes.append(v)
        elif v.group_id in labeled_groups or v.group_id in unlabeled_groups:
            pools.unlabeled_slices += [
                (len(pools.unlabeled_volumes), d) for d in range(v.num_slices)
            ]
            pools.unlabeled_volumes.append(dataclasses.replace(v, label=None))
    return pools


class DataSource(ABC):
    """A dataset layout: resolves the case split and loads volumes.

    Attributes:
        class_names: All class names, background first.
        in_channels: Number of image channels.
        root: Dataset root (or a description for generated data).
    """

    class_names: list[str]
    in_channels: int
    root: str

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.grouper = CaseGrouper(options.case_pattern)

    def _open_root(self, root: str, layout: str, expected: str) -> Path:
        """Keep ``root`` and return it as a path.

        Raises:
            DataValidationError: Naming it, when it is not a folder.
        """
        self.root = root
        path = Path(root)
        if not path.is_dir():
            raise DataValidationError(f"{layout} root {path} is not a folder; expected {expected}.")
        return path

    @abstractmethod
    def case_split(self) -> CaseSplit:
        """Resolves (cheaply, from listings) the case-level split and checks it."""

    @abstractmethod
    def load_training(self, split: CaseSplit) -> TrainingPools:
        """Loads and checks the training volumes of ``split``."""

    @abstractmethod
    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        """Loads and checks the volumes of an evaluation split (labels optional for predict)."""
