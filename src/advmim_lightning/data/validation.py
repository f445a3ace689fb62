"""Checks run while data is loaded, and the error they raise.

Every check raises :class:`DataValidationError` with a message that names the file (or the list /
split file) at fault, the value found and what was expected, so that a user can fix the data
without reading this code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DataValidationError",
    "check_disjoint",
    "check_file_exists",
    "check_finite",
    "check_label_values",
    "check_no_duplicates",
    "check_non_empty",
    "check_num_classes",
    "check_same_geometry",
    "check_same_shape",
]

#: Tolerance of :func:`check_same_geometry`, per value: ``|a - b| <= GEOMETRY_ATOL +
#: GEOMETRY_RTOL * |b|`` (as ``numpy.allclose``; the relaxed tolerances of nnU-Net's dataset
#: integrity check), for the spacing (mm), the origin (mm) and the direction cosines.
GEOMETRY_RTOL = 1e-3
GEOMETRY_ATOL = 1e-4


class DataValidationError(ValueError):
    """Raised when a dataset on disk (or a split) does not have the expected content.

    A subclass of :class:`ValueError`, so callers that already catch ``ValueError`` for bad
    arguments also catch bad data.
    """


def check_file_exists(path: str | Path, what: str) -> Path:
    """Returns ``path`` as a :class:`~pathlib.Path` if it is an existing file.

    Args:
        path: The file expected to exist.
        what: What the file is, for the message (e.g. ``"training slice"``).

    Returns:
        The path.

    Raises:
        DataValidationError: If the file does not exist or is not a regular file.
    """
    p = Path(path)
    if not p.is_file():
        found = "a directory" if p.is_dir() else "nothing"
        raise DataValidationError(
            f"Missing {what} file {p}: found {found}, expected a readable file."
        )
    return p


def check_finite(array: np.ndarray, source: str, what: str = "image") -> None:
    """Checks that an array holds no NaN or infinite values.

    Args:
        array: Array of any shape; integer arrays always pass.
        source: The file the array was read from.
        what: Name of the array, for the message.

    Raises:
        DataValidationError: If a value is NaN or infinite; the message gives the count and the
            index of the first one.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    first = tuple(int(i) for i in bad[0])
    value = float(array[first])
    raise DataValidationError(
        f"{source}: {what} has {len(bad)} non-finite voxel(s) (first {value} at index {first}); "
        "expected only finite values."
    )


def check_label_values(label: np.ndarray, num_classes: int, source: str) -> None:
    """Checks that a label map holds integer values in ``[0, num_classes)``.

    Args:
        label: Label array of any shape, integer or float dtype.
        num_classes: Number of classes, background included.
        source: The file the label was read from.

    Raises:
        DataValidationError: If a value is not an integer or lies outside ``[0, num_classes)``.
    """
    if label.size == 0:
        return
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, source, "label")
        non_integer = label != np.round(label)
        if non_integer.any():
            value = label[non_integer].flat[0]
            raise DataValidationError(
                f"{source}: label holds the non-integer value {float(value)!r}; expected integer "
                f"class indices in [0, {num_classes})."
            )
    low, high = label.min(), label.max()
    if low < 0 or high >= num_classes:
        found = sorted({int(v) for v in np.unique(label) if v < 0 or v >= num_classes})
        raise DataValidationError(
            f"{source}: label value(s) {found} outside [0, {num_classes}) (num_classes="
            f"{num_classes}); expected class indices 0..{num_classes - 1}."
        )


def check_non_empty(shape: Sequence[int], source: str, what: str = "image") -> None:
    """Refuses an array with zero size along an axis (no voxel to read).

    Args:
        shape: The array's shape (as stored, or as its header gives it).
        source: The file, for the message.
        what: What the array is, for the message.

    Raises:
        DataValidationError: ``<source>: <what> has zero size along axis <k> (shape <shape>);
            expected at least one voxel along every axis.``
    """
    empty = [axis for axis, length in enumerate(shape) if int(length) == 0]
    if empty or len(shape) == 0:
        where = f"axis {empty[0]}" if len(empty) == 1 else f"axes {empty}"
        raise DataValidationError(
            f"{source}: {what} has zero size along {where} (shape {tuple(shape)}); expected at "
            "least one voxel along every axis."
        )


def check_num_classes(num_classes: int, found: int, source: str, what: str) -> None:
    """Refuses a ``num_classes`` other than the number of classes the data holds.

    Shared by the layouts: NIfTI (``dataset.json``'s labels), the phantom (its 4 classes) and
    ACDC (the highest label value read, plus one). Too many classes is as wrong as too few: a
    class that occurs in no label would score Dice 1 and HD95 0 on every case.

    Args:
        num_classes: The ``num_classes`` setting.
        found: The number of classes the data holds.
        source: The file (or folder, or data) that says so, for the message.
        what: What was found there, for the message (e.g. ``"4 labels ['bg', ...]"``).

    Raises:
        DataValidationError: ``<source>: <what>, but num_classes=<n>; expected
            num_classes=<found>.``
    """
    if num_classes != found:
        raise DataValidationError(
            f"{source}: {what}, but num_classes={num_classes}; expected num_classes={found}."
        )


def check_same_shape(
    image_shape: Sequence[int],
    label_shape: Sequence[int],
    image_source: str,
    label_source: str,
    what: str = "label",
) -> None:
    """Checks that an image and its label have the same spatial shape.

    Args:
        image_shape: Spatial shape of the image (no channel axis).
        label_shape: Shape of the label.
        image_source: Image file.
        label_source: Label file.
        what: What the second file is, for the message (``"label"``, ``"channel"``).

    Raises:
        DataValidationError: If the shapes differ.
    """
    if tuple(image_shape) != tuple(label_shape):
        raise DataValidationError(
            f"{label_source}: {what} shape {tuple(label_shape)} does not match the image shape "
            f"{tuple(image_shape)} of {image_source}; expected equal shapes."
        )


def _direction(affine: np.ndarray) -> np.ndarray:
    """The 3 x 3 direction cosines of a voxel-to-world affine (its columns at unit length)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    return linear / np.where(norms > 0, norms, 1.0)


def _shown(values: np.ndarray) -> str:
    rounded = np.round(np.asarray(values, dtype=np.float64), 4) + 0.0  # no "-0.0"
    return str(tuple(rounded.tolist()) if rounded.ndim == 1 else rounded.tolist())


def check_same_geometry(
    reference: tuple[Sequence[int], Sequence[float], np.ndarray],
    other: tuple[Sequence[int], Sequence[float], np.ndarray],
    reference_source: str,
    other_source: str,
    what: str = "label",
) -> None:
    """Checks that a file lies on the voxel grid of its reference (a label on its image's).

    Shape, spacing, origin and direction are compared, as nnU-Net's dataset check does, the
    last three within :data:`GEOMETRY_RTOL` / :data:`GEOMETRY_ATOL`; a mirrored or shifted
    affine is refused even when the arrays have the same shape.

    Args:
        reference: ``(shape, spacing, affine)`` of the reference file (the image, or the first
            channel of a multi-channel image): array shape, voxel spacing in mm, 4 x 4
            voxel-to-world affine.
        other: The same for the file checked against it.
        reference_source: The reference file, for the message.
        other_source: The checked file, for the message.
        what: What the checked file is (``"label"``, ``"channel"``), for the message.

    Raises:
        DataValidationError: Naming the checked file, each property that differs with both
            values, and the reference file.
    """
    check_same_shape(reference[0], other[0], reference_source, other_source, what)
    ref_affine = np.asarray(reference[2], dtype=np.float64)
    affine = np.asarray(other[2], dtype=np.float64)
    pairs = {
        "spacing": (np.asarray(other[1], np.float64), np.asarray(reference[1], np.float64)),
        "origin": (affine[:3, 3], ref_affine[:3, 3]),
        "direction": (_direction(affine), _direction(ref_affine)),
        # the voxel size the affine itself gives (a header may disagree with its affine)
        "affine voxel size": (
            np.linalg.norm(affine[:3, :3], axis=0),
            np.linalg.norm(ref_affine[:3, :3], axis=0),
        ),
    }
    differing = [
        f"{name} {_shown(found)} (image: {_shown(expected)})"
        for name, (found, expected) in pairs.items()
        if found.shape != expected.shape
        or not np.allclose(found, expected, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL)
    ]
    if differing:
        raise DataValidationError(
            f"{other_source}: {what} geometry differs from the image {reference_source}: "
            f"{'; '.join(differing)}; expected the {what} on the image's voxel grid (same shape, "
            f"and spacing, origin and direction equal within rtol={GEOMETRY_RTOL}, "
            f"atol={GEOMETRY_ATOL}, as nnU-Net checks)."
        )


def check_no_duplicates(ids: Iterable[str], source: str, what: str = "case id") -> None:
    """Checks that no id occurs twice.

    Args:
        ids: Ids in any order.
        source: Where the ids come from (a list file, a folder, a split file).
        what: What the ids are, for the message.

    Raises:
        DataValidationError: If an id occurs more than once.
    """
    counts = Counter(ids)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    if duplicates:
        shown = ", ".join(f"{d!r} ({counts[d]}x)" for d in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise DataValidationError(
            f"{source}: duplicate {what}(s) {shown}{more}; expected each {what} once."
        )


def check_disjoint(
    labeled_cases: Iterable[str], other_cases: Iterable[str], other_name: str, source: str
) -> None:
    """Checks that no labeled training case also appears in an evaluation split.

    Args:
        labeled_cases: Case (patient) ids of the labeled training pool.
        other_cases: Case ids of the evaluation split.
        other_name: Name of the evaluation split (``"val"`` or ``"test"``).
        source: Where the split comes from, for the message.

    Raises:
        DataValidationError: If a case is in both.
    """
    overlap = sorted(set(labeled_cases) & set(other_cases))
    if overlap:
        raise DataValidationError(
            f"{source}: case(s) {overlap[:10]} are in both the labeled training pool and the "
            f"{other_name} split; expected disjoint case sets (a case is grouped by its case id "
            "pattern, e.g. both frames of a patient)."
        )
