"""The data settings, declared and checked once: frozen dataclasses the sources and the data
module share.

- :class:`SourceSettings`: how a source groups, normalises, splits and caches its cases
  (``case_pattern``, ``normalization``, ``window_level``, ``window_width``, ``split_file``,
  ``split_seed``, ``val_fraction``, ``test_fraction``, ``slice_axis``, ``cache_dir``). Every
  built-in source takes one (``ACDCSource(root, settings)``, ``NiftiSource(root, settings)``,
  ``PhantomSource(phantom, settings)``) and the data module hands its ``settings`` argument
  on (``--data.settings.normalization zscore``). A source uses the fields that apply to it
  and ignores the others (ACDC refuses ``split_file``: its lists define the split).
- :class:`PhantomSettings`: the generated phantom (``--data.phantom.cases 24``).
- :class:`SecondPhantomSettings`: a second, unlabeled phantom as changes to the default one
  (``--data.unlabeled_phantom.domain_strength 0.35``).
- :class:`AugmentationSettings` and :class:`LoaderSettings`: the data module's training
  augmentation and data-loader options (``--data.augmentation.rotate_probability 1.0``,
  ``--data.loaders.eval_num_workers 2``).

Each dataclass checks its fields when built (``ValueError`` naming the field, the value given
and what is allowed), so a bad value stops a run before any data is read. Paths have ``~``
expanded once, here (:func:`expand_path`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from advmim_lightning.data.arguments import check_choice, check_fraction, check_int
from advmim_lightning.data.cases import CaseGrouper
from advmim_lightning.data.phantom import check_domain, check_heart_scale
from advmim_lightning.data.transforms import IMAGE_INTERPOLATIONS, NORMALIZATIONS

__all__ = [
    "AugmentationSettings",
    "LoaderSettings",
    "Normalization",
    "PhantomSettings",
    "SecondPhantomSettings",
    "SourceSettings",
    "as_settings",
    "expand_path",
]

Normalization = Literal["minmax", "zscore", "ct_window", "none"]
_S = TypeVar("_S")


def expand_path(path: str | Path | None) -> str | None:
    """``path`` with a leading ``~`` expanded (:meth:`pathlib.Path.expanduser`); None stays."""
    if path is None or str(path) == "":
        return None if path is None else ""
    return str(Path(path).expanduser())


def as_settings(name: str, value: Any, kind: type[_S]) -> _S:
    """``value`` as a ``kind`` dataclass: itself, or built from a mapping of its fields (as a
    config's ``as_dict()`` or a checkpoint's hyper-parameters hold it).

    Args:
        name: The argument's name, for the message.
        value: A ``kind`` instance or a mapping of its fields.
        kind: One of the settings dataclasses.

    Raises:
        TypeError: Naming the argument, when ``value`` is neither, or a key is not a field.
        ValueError: From the dataclass's checks.
    """
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(kind)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(
                f"{name}: unknown field(s) {unknown}; expected fields of {kind.__name__} "
                f"{sorted(known)}"
            )
        return kind(**value)
    raise TypeError(
        f"{name} must be a {kind.__name__} (advmim_lightning.data.settings) or a mapping of its "
        f"fields, got {type(value).__name__}"
    )


@dataclass(frozen=True)
class SourceSettings:
    """How a data source groups, normalises, splits and caches its cases.

    Attributes:
        case_pattern: Regular expression whose first group is the case id of a volume or slice
            name (``re.match``). None: ``r"^(patient\\d+)"`` for ACDC, the whole case name for
            NIfTI and phantom.
        normalization: Per-volume intensity normalisation: ``"minmax"`` (ACDC's),
            ``"zscore"``, ``"ct_window"`` or ``"none"``.
        window_level: CT window centre for ``"ct_window"``.
        window_width: CT window width for ``"ct_window"`` (> 0).
        split_file: JSON split file ``{"train": [...], "val": [...], "test": [...],
            "labeled": [...]}`` (every key optional; nifti, phantom); its ``labeled`` key wins
            over ``labeled_cases``. None: a seeded split.
        split_seed: Seed of the seeded case-level splits (kept apart from the data module's
            ``seed`` so that training seeds share one test set).
        val_fraction: Fraction of labeled training cases used for validation (nifti, phantom),
            in ``[0, 1)``.
        test_fraction: Fraction of cases used for testing (phantom), in ``[0, 1)``.
        slice_axis: Axis of the stored NIfTI array to slice along (0, 1 or 2); None for the
            axis with the coarsest spacing (per case).
        cache_dir: Folder for caches: the generated phantom (``.npz``) and decoded NIfTI
            volumes (memory-mapped ``.npy``), each checked against a manifest when read. None
            keeps everything in memory. ``~`` is expanded.

    Raises:
        ValueError: On an invalid ``case_pattern``, an unknown ``normalization``,
            ``window_width <= 0``, a fraction outside ``[0, 1)`` or a ``slice_axis`` other than
            0, 1, 2 or None.
    """

    case_pattern: str | None = None
    normalization: Normalization = "minmax"
    window_level: float = 40.0
    window_width: float = 400.0
    split_file: str | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    slice_axis: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        CaseGrouper(self.case_pattern)  # raises ValueError on an invalid pattern
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        if self.window_width <= 0:
            raise ValueError(f"window_width must be > 0, got {self.window_width}")
        check_fraction("val_fraction", self.val_fraction)
        check_fraction("test_fraction", self.test_fraction)
        if self.slice_axis is not None and (
            isinstance(self.slice_axis, bool) or self.slice_axis not in (0, 1, 2)
        ):
            raise ValueError(f"slice_axis must be 0, 1, 2 or None, got {self.slice_axis!r}")
        object.__setattr__(self, "cache_dir", expand_path(self.cache_dir) or None)
        object.__setattr__(self, "split_file", expand_path(self.split_file) or None)


@dataclass(frozen=True)
class PhantomSettings:
    """The built-in phantom (``layout="phantom"``; see :mod:`~advmim_lightning.data.phantom`).

    Attributes:
        cases: Number of cases (>= 1).
        slices: Slices per case (>= 1).
        size: In-plane size in pixels (>= 16).
        seed: Seed of the phantom's content (the data itself, independent of the training
            seed).
        heart_scale: The heart's size in pixels relative to the default (ACDC-like)
            proportions, in ``[0.5, 1.6]``; 1.0 is the default phantom.
        domain: The acquisition: ``"source"`` (the default phantom, bit for bit) or
            ``"target"`` (the same anatomy under another contrast, bias field and noise: a
            hard domain gap; :mod:`~advmim_lightning.data.phantom`).
        domain_strength: With ``domain="target"``: how far its acquisition is from the
            source's, in ``[0, 1]``; 1 (the default) is the full target, 0 the source images,
            in between a milder gap (the contrast mapping blended with the identity, the extra
            bias field and noise scaled down).

    Raises:
        ValueError: On a value out of range (naming ``phantom.<field>``).
    """

    cases: int = 40
    slices: int = 8
    size: int = 128
    seed: int = 0
    heart_scale: float = 1.0
    domain: Literal["source", "target"] = "source"
    domain_strength: float = 1.0

    def __post_init__(self) -> None:
        check_int("phantom.cases", self.cases, 1)
        check_int("phantom.slices", self.slices, 1)
        check_int("phantom.size", self.size, 16)
        check_heart_scale(self.heart_scale)
        check_domain(self.domain, self.domain_strength)


@dataclass(frozen=True)
class SecondPhantomSettings:
    """A second, unlabeled phantom (``unlabeled_layout="phantom"``), as changes to the default one.

    The default second phantom is the main one (``phantom``) in the target domain with the next
    phantom seed: other patients of the same size and number under another acquisition. Each
    field given here replaces that field of it; a field left at None keeps it. So
    ``--data.unlabeled_phantom.domain_strength 0.35`` is the default second phantom at a
    milder gap, with the main phantom's cases, slices, size and heart scale.

    Attributes:
        cases, slices, size, seed, heart_scale, domain, domain_strength: As
            :class:`PhantomSettings`; None: the default second phantom's.

    Raises:
        ValueError: From :meth:`resolve`, naming ``unlabeled_phantom.<field>``.
    """

    cases: int | None = None
    slices: int | None = None
    size: int | None = None
    seed: int | None = None
    heart_scale: float | None = None
    domain: Literal["source", "target"] | None = None
    domain_strength: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields given (not None)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def resolve(self, main: PhantomSettings) -> PhantomSettings:
        """The second phantom: the main phantom ``main`` in the target domain with the next
        seed, with the given fields replaced.

        Raises:
            ValueError: When the result is not a valid phantom (``unlabeled_phantom.<field>``
                named, with the second phantom it would have been).
        """
        default = dataclasses.replace(main, domain="target", seed=main.seed + 1)
        given = self.given()
        try:
            return dataclasses.replace(default, **given)
        except ValueError as err:
            raise ValueError(
                f"{str(err).replace('phantom.', 'unlabeled_phantom.')} (the second phantom: "
                f"{given} given over the default second phantom, data.phantom in the target "
                f"domain with seed {default.seed})"
            ) from err


@dataclass(frozen=True)
class AugmentationSettings:
    """Augmentation of training slices (SSL4MIS's ``RandomGenerator``), then resize.

    Attributes:
        enabled: Whether to augment training slices (resize only when False).
        image_interpolation: Image resize: ``"nearest"`` (as SSL4MIS) or ``"bilinear"``.
        rot_flip_probability: Probability of rot90 + flip, in ``[0, 1]``.
        rotate_probability: Probability of a rotation in ``[-20, 20)`` degrees when rot90 +
            flip is not applied: 0.5 reproduces SSL4MIS's code (rotation a quarter of the
            time); 1.0 rotates whenever rot90 + flip is not applied.

    Raises:
        ValueError: On an unknown interpolation or a probability outside ``[0, 1]``.
    """

    enabled: bool = True
    image_interpolation: Literal["nearest", "bilinear"] = "nearest"
    rot_flip_probability: float = 0.5
    rotate_probability: float = 0.5

    def __post_init__(self) -> None:
        check_choice("image_interpolation", self.image_interpolation, IMAGE_INTERPOLATIONS)
        for name in ("rot_flip_probability", "rotate_probability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class LoaderSettings:
    """Data-loader options beyond ``num_workers``.

    Attributes:
        eval_num_workers: Worker processes for val/test/predict loaders (volumes are held in
            memory, so 0 is usually fastest).
        pin_memory: Pin training batches; None pins when CUDA is available.
        persistent_workers: Keep training workers alive between epochs.

    Raises:
        ValueError: On a negative ``eval_num_workers``.
    """

    eval_num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        check_int("eval_num_workers", self.eval_num_workers, 0)
