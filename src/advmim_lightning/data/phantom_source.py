"""The phantom as a data source (``layout="phantom"``): its arguments, cache and split."""

from __future__ import annotations

import numpy as np

from advmim_lightning.data.cases import CaseSplit, read_split_file, resolve_case_split
from advmim_lightning.data.phantom import (
    PHANTOM_CLASS_NAMES,
    PHANTOM_SLICE_AXIS,
    PhantomCase,
    generate_phantom,
    phantom_case_ids,
)
from advmim_lightning.data.settings import PhantomSettings, SourceSettings
from advmim_lightning.data.source import DataSource, EvalSplit, TrainingPools, pools_from_volumes
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import check_num_classes

__all__ = ["PhantomSource"]


class PhantomSource(DataSource):
    """The phantom as a data source: every case is labeled; the split is seeded.

    ``layout="phantom"``. ``test_fraction`` of the cases form the test (and predict) set,
    ``val_fraction`` of the rest the validation set (both seeded by ``split_seed``, or from a
    split file); the first ``labeled_cases`` of the remaining cases in seeded order are
    labeled, the others are the unlabeled pool. ``num_classes`` must be 4.

    Args:
        phantom: The phantom (:class:`~advmim_lightning.data.settings.PhantomSettings`: cases,
            slices, size, seed, heart scale, domain); None: the default phantom.
        settings: The shared :class:`~advmim_lightning.data.settings.SourceSettings`; the
            phantom uses every field but ``slice_axis``: ``split_file`` (its ``labeled`` key
            wins over ``labeled_cases``), ``split_seed``, ``val_fraction``,
            ``test_fraction``, ``case_pattern``, the normalisation and ``cache_dir`` (the
            generated phantom as ``.npz``, written by :meth:`prepare` and checked against its
            manifest when read; None generates it in memory).

    Raises:
        DataValidationError: At :meth:`open`, if ``num_classes`` is not 4.
    """

    layout = "phantom"

    def __init__(
        self, phantom: PhantomSettings | None = None, settings: SourceSettings | None = None
    ) -> None:
        super().__init__(settings)
        self.phantom = PhantomSettings() if phantom is None else phantom
        self.class_names = list(PHANTOM_CLASS_NAMES)
        self.in_channels = 1
        p = self.phantom
        scale = f", heart_scale={p.heart_scale:g}" if p.heart_scale != 1.0 else ""
        scale += f", domain={p.domain}" if p.domain != "source" else ""
        scale += f", domain_strength={p.domain_strength:g}" if p.domain_strength != 1.0 else ""
        self.root = (
            f"phantom(cases={p.cases}, slices={p.slices}, size={p.size}, seed={p.seed}{scale})"
        )
        self._cases: list[PhantomCase] | None = None

    def open(self) -> None:
        """Refuses a ``num_classes`` other than the phantom's 4."""
        count = len(PHANTOM_CLASS_NAMES)
        what = f"the phantom has {count} classes {PHANTOM_CLASS_NAMES}"
        check_num_classes(self.num_classes, count, "phantom", what)

    def prepare(self) -> None:
        """Writes the phantom cache once when ``cache_dir`` is set."""
        if self.settings.cache_dir is not None:
            self._generate()

    def missing_cases_hint(self, which: EvalSplit) -> str:
        if which == "val":
            return f"val_fraction={self.settings.val_fraction}"
        return "test_fraction > 0 or a 'test' list in the split file"

    def generated(self) -> list[PhantomCase]:
        """The generated cases (made once, or read from ``cache_dir``)."""
        if self._cases is None:
            self._cases = self._generate()
        return self._cases

    def _generate(self) -> list[PhantomCase]:
        p = self.phantom
        return generate_phantom(
            p.cases,
            p.slices,
            p.size,
            p.seed,
            cache_dir=self.settings.cache_dir,
            heart_scale=p.heart_scale,
            domain=p.domain,
            domain_strength=p.domain_strength,
        )

    def case_split(self) -> CaseSplit:
        ids = phantom_case_ids(self.phantom.cases)
        settings = self.settings
        split_file = read_split_file(settings.split_file) if settings.split_file else None
        return resolve_case_split(
            ids,
            set(ids),
            labeled_cases=self.labeled_cases,
            split=split_file,
            split_seed=settings.split_seed,
            val_fraction=settings.val_fraction,
            test_fraction=settings.test_fraction,
            fixed_test=None,
            source=settings.split_file or self.root,
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
