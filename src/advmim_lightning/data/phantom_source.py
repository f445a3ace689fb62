"""The phantom as a data source (``layout="phantom"``): its arguments, cache and split."""

from __future__ import annotations

import numpy as np

from advmim_lightning.data.arguments import check_fraction, check_int
from advmim_lightning.data.cases import CaseSplit, read_split_file, resolve_case_split
from advmim_lightning.data.phantom import (
    PHANTOM_CLASS_NAMES,
    PHANTOM_SLICE_AXIS,
    PhantomCase,
    check_heart_scale,
    generate_phantom,
    phantom_case_ids,
)
from advmim_lightning.data.source import (
    DataSource,
    EvalSplit,
    Normalization,
    TrainingPools,
    pools_from_volumes,
)
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import DataValidationError

__all__ = ["PhantomSource"]


class PhantomSource(DataSource):
    """The phantom as a data source: every case is labeled; the split is seeded.

    ``layout="phantom"``. ``test_fraction`` of the cases form the test (and predict) set,
    ``val_fraction`` of the rest the validation set (both seeded by ``split_seed``, or from a
    split file); the first ``labeled_cases`` of the remaining cases in seeded order are
    labeled, the others are the unlabeled pool. ``num_classes`` must be 4.

    Args:
        num_cases: Number of cases (the data module's ``phantom_cases``).
        num_slices: Slices per case (``phantom_slices``).
        size: In-plane size, >= 16 (``phantom_size``).
        seed: Phantom seed: the data itself, independent of the training seed
            (``phantom_seed``).
        split_file: JSON split file (see :mod:`~advmim_lightning.data.cases`); its
            ``labeled`` key wins over ``labeled_cases``. None: a seeded split.
        split_seed: Seed of the seeded case-level split.
        val_fraction: Fraction of the non-test cases used for validation.
        test_fraction: Fraction of the cases used for testing.
        case_pattern: See :class:`~advmim_lightning.data.source.DataSource`.
        normalization: See :class:`~advmim_lightning.data.source.DataSource`.
        window_level: See :class:`~advmim_lightning.data.source.DataSource`.
        window_width: See :class:`~advmim_lightning.data.source.DataSource`.
        cache_dir: Folder for the generated phantom (``.npz``, written by :meth:`prepare`);
            None generates it in memory.
        heart_scale: The heart's size relative to the default phantom, in ``[0.5, 1.6]``
            (``phantom_heart_scale``; see :func:`generate_phantom_case`).

    Raises:
        ValueError: On arguments out of range (naming the data module's argument too).
        DataValidationError: At :meth:`open`, if ``num_classes`` is not 4.
    """

    layout = "phantom"

    def __init__(
        self,
        num_cases: int = 40,
        num_slices: int = 8,
        size: int = 128,
        seed: int = 0,
        split_file: str | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        case_pattern: str | None = None,
        normalization: Normalization = "minmax",
        window_level: float = 40.0,
        window_width: float = 400.0,
        cache_dir: str | None = None,
        heart_scale: float = 1.0,
    ) -> None:
        check_int("phantom_cases", num_cases, 1, note="PhantomSource num_cases")
        check_heart_scale(heart_scale)
        check_int("phantom_slices", num_slices, 1, note="PhantomSource num_slices")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_fraction(name, value)
        if size < 16:
            raise ValueError(f"phantom_size must be >= 16 (PhantomSource size), got {size}")
        super().__init__(case_pattern, normalization, window_level, window_width)
        self.class_names = list(PHANTOM_CLASS_NAMES)
        self.in_channels = 1
        self.num_cases, self.num_slices, self.size, self.seed = num_cases, num_slices, size, seed
        self.split_file = split_file
        self.split_seed = split_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.cache_dir = cache_dir
        self.heart_scale = heart_scale
        scale = f", heart_scale={heart_scale:g}" if heart_scale != 1.0 else ""
        self.root = (
            f"phantom(cases={num_cases}, slices={num_slices}, size={size}, seed={seed}{scale})"
        )
        self._cases: list[PhantomCase] | None = None

    def open(self) -> None:
        """Refuses a ``num_classes`` other than the phantom's 4."""
        if self.num_classes != len(PHANTOM_CLASS_NAMES):
            raise DataValidationError(
                f"phantom: num_classes={self.num_classes}; the phantom has "
                f"{len(PHANTOM_CLASS_NAMES)} classes {PHANTOM_CLASS_NAMES}, expected num_classes=4."
            )

    def prepare(self) -> None:
        """Writes the phantom cache once when ``cache_dir`` is set."""
        if self.cache_dir is not None:
            self._generate()

    def missing_cases_hint(self, which: EvalSplit) -> str:
        if which == "val":
            return f"val_fraction={self.val_fraction}"
        return "test_fraction > 0 or a 'test' list in the split file"

    def generated(self) -> list[PhantomCase]:
        """The generated cases (made once, or read from ``cache_dir``)."""
        if self._cases is None:
            self._cases = self._generate()
        return self._cases

    def _generate(self) -> list[PhantomCase]:
        return generate_phantom(
            self.num_cases,
            self.num_slices,
            self.size,
            self.seed,
            cache_dir=self.cache_dir,
            heart_scale=self.heart_scale,
        )

    def case_split(self) -> CaseSplit:
        ids = phantom_case_ids(self.num_cases)
        split_file = read_split_file(self.split_file) if self.split_file else None
        return resolve_case_split(
            ids,
            set(ids),
            labeled_cases=self.labeled_cases,
            split=split_file,
            split_seed=self.split_seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            fixed_test=None,
            source=self.split_file or self.root,
        )

    def _volumes(self, ids: list[str]) -> list[Volume]:
        by_id = {c.case_id: c for c in self.generated()}
        volumes = []
        for case_id in ids:
            c = by_id[case_id]
            s_in, _, s_slice = c.spacing
            volumes.append(
                Volume(
                    case_id=case_id,
                    group_id=case_id,
                    image=self.normalize(np.moveaxis(c.image, PHANTOM_SLICE_AXIS, 0)[None]),
                    label=np.ascontiguousarray(np.moveaxis(c.label, PHANTOM_SLICE_AXIS, 0)),
                    spacing=(s_slice, s_in, s_in),
                    spacing_known=True,
                    affine=np.array(c.affine, dtype=np.float64),
                    slice_axis=PHANTOM_SLICE_AXIS,
                    source=f"phantom:{case_id}",
                )
            )
        return volumes

    def load_training(self, split: CaseSplit) -> TrainingPools:
        return pools_from_volumes(self._volumes(split.labeled + split.unlabeled), split)

    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        return self._volumes(split.val if which == "val" else split.test)
