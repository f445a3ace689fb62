"""What every data source (dataset layout) provides to the data module: the contract."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from advmim_lightning.data.cases import CaseGrouper, CaseSplit
from advmim_lightning.data.settings import Normalization, SourceSettings
from advmim_lightning.data.transforms import normalize_volume
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import DataValidationError

__all__ = [
    "DataSource",
    "EvalSplit",
    "Normalization",
    "SourceSettings",
    "TrainingPools",
    "check_training_pools",
    "pools_from_volumes",
]

EvalSplit = Literal["val", "test", "predict"]


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
    """Where the data module's volumes come from: a dataset layout, or data of your own.

    The built-in sources are :class:`~advmim_lightning.data.acdc.ACDCSource`,
    :class:`~advmim_lightning.data.nifti.NiftiSource` and
    :class:`~advmim_lightning.data.phantom_source.PhantomSource`; ``AdvMIMDataModule(layout=...)``
    builds one of them from its flat arguments, ``AdvMIMDataModule(source=...)`` takes any
    subclass. The data module calls, in this order:

    1. ``__init__(...)``: the source's own arguments, checked (``ValueError``); cheap.
    2. :meth:`bind` (do not override): hands over ``num_classes`` and ``labeled_cases``, calls
       :meth:`open`, then checks ``class_names`` and ``in_channels``.
    3. :meth:`prepare` (optional), once on rank 0 (``prepare_data``): write caches.
    4. :meth:`case_split` (abstract): the case-level split, cheaply, from listings.
    5. :meth:`load_training` (abstract, at ``setup("fit")``) and :meth:`load_eval` (abstract,
       per evaluation split): the volumes, normalised and checked.

    Attributes:
        class_names: All class names, background first (``num_classes`` of them); set in
            ``__init__`` or :meth:`open`.
        in_channels: Number of image channels; set in ``__init__`` or :meth:`open`.
        root: Dataset root, or a description of generated data (for messages).
        num_classes: The data module's ``num_classes`` (after :meth:`bind`).
        labeled_cases: The data module's ``labeled_cases``: a count or a tuple of case ids
            (after :meth:`bind`).
        grouper: Maps volume and slice names to case ids (``case_pattern``).

        settings: The :class:`~advmim_lightning.data.settings.SourceSettings` in use (the
            fields a source does not use are ignored).

    Args:
        settings: The shared settings (case pattern, normalisation, split, cache); None: the
            defaults.
        **changes: Fields of :class:`~advmim_lightning.data.settings.SourceSettings` to
            change (``super().__init__(normalization="zscore")``).

    Raises:
        ValueError: From :class:`~advmim_lightning.data.settings.SourceSettings` (an invalid
            ``case_pattern``, an unknown ``normalization``, ``window_width <= 0``, ...).
        TypeError: On a keyword that is not a field of ``SourceSettings``.
    """

    class_names: list[str]
    in_channels: int
    root: str = "data source"
    num_classes: int
    labeled_cases: int | tuple[str, ...]

    def __init__(self, settings: SourceSettings | None = None, **changes: Any) -> None:
        settings = SourceSettings() if settings is None else settings
        if not isinstance(settings, SourceSettings):
            raise TypeError(
                f"settings must be a SourceSettings (advmim_lightning.data.settings), got "
                f"{type(settings).__name__}"
            )
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(SourceSettings)})
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown setting(s) {unknown}; expected fields of "
                f"SourceSettings {[f.name for f in dataclasses.fields(SourceSettings)]}"
            )
        self.settings = dataclasses.replace(settings, **changes) if changes else settings
        self.grouper = CaseGrouper(self.settings.case_pattern)

    @property
    def case_pattern(self) -> str | None:
        """The case id pattern in use (``settings.case_pattern``)."""
        return self.settings.case_pattern

    @property
    def normalization(self) -> Normalization:
        """The intensity normalisation (``settings.normalization``)."""
        return self.settings.normalization

    def bind(self, num_classes: int, labeled_cases: int | Sequence[str]) -> None:
        """Receives the data module's shared settings, opens the source and checks it.

        Args:
            num_classes: Number of classes including background.
            labeled_cases: Number of labeled training cases, or their case ids.

        Raises:
            DataValidationError: From :meth:`open`, or when ``class_names`` does not list
                ``num_classes`` names.
            ValueError: When ``in_channels`` is not an integer >= 1.
        """
        self.num_classes = int(num_classes)
        self.labeled_cases = (
            labeled_cases if isinstance(labeled_cases, int) else tuple(labeled_cases)
        )
        self.open()
        names = list(getattr(self, "class_names", []))
        if len(names) != self.num_classes:
            raise DataValidationError(
                f"{self.root}: {type(self).__name__} has {len(names)} class name(s) {names}, "
                f"but num_classes={self.num_classes}; expected one name per class, background "
                "first."
            )
        channels = getattr(self, "in_channels", None)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f"{self.root}: {type(self).__name__}.in_channels must be an integer >= 1, got "
                f"{channels!r}"
            )

    def open(self) -> None:
        """Checks the data is there and sets what depends on ``num_classes`` (optional).

        Called once by :meth:`bind`, with :attr:`num_classes` and :attr:`labeled_cases` set.

        Raises:
            DataValidationError: When the data is missing or does not match the settings.
        """
        return None

    def prepare(self) -> None:
        """Work done once per machine, on rank 0, before ``setup`` (e.g. writing a cache)."""
        return None

    def missing_cases_hint(self, which: EvalSplit) -> str:
        """What an empty evaluation split lacks, for the data module's messages."""
        return f"{which} cases from {type(self).__name__}.case_split()"

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Normalises a ``C x ...`` volume with this source's ``normalization``."""
        settings = self.settings
        return normalize_volume(
            image, settings.normalization, settings.window_level, settings.window_width
        )

    @property
    def label_dtype(self) -> type:
        """Smallest unsigned dtype holding every class index."""
        return np.uint8 if self.num_classes <= 256 else np.int32

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
        """Resolves (cheaply, from listings) the case-level split and checks it.

        Returns:
            The labeled and unlabeled training cases, the validation and test cases (case ids,
            disjoint where the data module requires it) and ``source`` for messages.
        """

    @abstractmethod
    def load_training(self, split: CaseSplit) -> TrainingPools:
        """Loads and checks the training volumes of ``split``.

        Returns:
            The labeled pool (volumes with labels) and the unlabeled pool (labels removed),
            e.g. :func:`pools_from_volumes` of the training volumes.
        """

    @abstractmethod
    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        """Loads and checks the volumes of an evaluation split (labels optional for predict).

        Returns:
            One :class:`~advmim_lightning.data.types.Volume` per volume, image normalised
            (``C x D x H x W`` float32), label ``D x H x W`` (or None).
        """


def check_training_pools(
    pools: TrainingPools,
    split: CaseSplit,
    *,
    labeled_cases: int | Sequence[str],
    require_unlabeled: bool,
    batch_sizes: tuple[int, int],
) -> None:
    """Checks the training pools a source loaded against the data module's settings.

    Warns when a pool has fewer slices than its batch size (batches then repeat slices).

    Args:
        pools: The labeled and unlabeled pools.
        split: The case split they were loaded for (``split.source`` names them).
        labeled_cases: The data module's ``labeled_cases``, for the message.
        require_unlabeled: Whether an empty unlabeled pool is an error.
        batch_sizes: ``(labeled_batch_size, unlabeled_batch_size)``.

    Raises:
        DataValidationError: If the labeled pool is empty, or the unlabeled pool is empty while
            ``require_unlabeled``.
    """
    where = split.source
    if not pools.labeled_slices:
        raise DataValidationError(
            f"{where}: the labeled pool is empty (labeled cases {split.labeled[:10]}); "
            "expected at least one labeled slice."
        )
    if not pools.unlabeled_slices and require_unlabeled:
        raise DataValidationError(
            f"{where}: the unlabeled pool is empty: all {len(split.labeled)} training "
            f"case(s) are labeled (labeled_cases={labeled_cases!r}); expected at least "
            "one unlabeled case for a semi-supervised method (for supervised-only "
            "training: --model.method supervised on the command line, or "
            "require_unlabeled=False)."
        )
    for name, count, batch in (
        ("labeled", len(pools.labeled_slices), batch_sizes[0]),
        ("unlabeled", len(pools.unlabeled_slices), batch_sizes[1]),
    ):
        if 0 < count < batch:
            rank_zero_warn(
                f"{where}: the {name} pool has {count} slice(s), fewer than "
                f"{name}_batch_size={batch}; batches repeat slices (the sampler cycles "
                "through the pool)."
            )
