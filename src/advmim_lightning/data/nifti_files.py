"""Reading an MSD / nnU-Net NIfTI folder: ``dataset.json``, one file, the slicing axis."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from advmim_lightning.data.validation import (
    DataValidationError,
    check_file_exists,
    check_non_empty,
    check_num_classes,
)

__all__ = ["coarsest_axis", "read_dataset_json", "read_nifti"]


_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def read_dataset_json(root: Path, num_classes: int) -> tuple[list[str], list[str], str]:
    """Reads ``dataset.json``.

    Args:
        root: Dataset root.
        num_classes: Expected number of classes (background included).

    Returns:
        ``(class_names, channel_names, file_ending)``.

    Raises:
        DataValidationError: Missing or unreadable file; missing ``labels`` or channel names;
            region-based labels; label values not ``0 .. num_classes - 1``; an unsupported file
            ending.
    """
    path = check_file_exists(root / "dataset.json", "dataset.json")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataValidationError(f"Unreadable {path}: {err}; expected JSON.") from err
    if not isinstance(meta, dict):
        raise DataValidationError(
            f"{path}: found a JSON {type(meta).__name__}; expected an object."
        )
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataValidationError(
            f"{path}: 'labels' is {labels!r}; expected a mapping such as "
            '{"background": 0, "LV": 1}.'
        )
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(
        isinstance(v, str) for v in labels.values()
    ):
        by_value = {int(k): str(v) for k, v in labels.items()}  # MSD style
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        by_value = {int(v): str(k) for k, v in labels.items()}  # nnU-Net v2 style
    else:
        raise DataValidationError(
            f"{path}: 'labels' is {labels!r}; expected integer class values (region-based "
            "labels with lists are not supported)."
        )
    if sorted(by_value) != list(range(len(by_value))):
        raise DataValidationError(
            f"{path}: label values {sorted(by_value)}; expected 0 .. {len(by_value) - 1} "
            "without gaps."
        )
    names = [by_value[i] for i in sorted(by_value)]
    check_num_classes(num_classes, len(by_value), str(path), f"{len(by_value)} labels {names}")
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataValidationError(
            f"{path}: 'channel_names' is {channels!r}; expected a mapping such as "
            '{"0": "MRI"} (or MSD "modality").'
        )
    if sorted(channels) != [str(i) for i in range(len(channels))]:
        raise DataValidationError(
            f"{path}: channel keys {sorted(channels)}; expected '0' .. '{len(channels) - 1}'."
        )
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise DataValidationError(
            f"{path}: file_ending {ending!r}; expected '.nii.gz' or '.nii' (other formats are not "
            "supported)."
        )
    return (
        [by_value[i] for i in range(len(by_value))],
        [str(channels[str(i)]) for i in range(len(channels))],
        ending,
    )


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Reads a NIfTI file as a 3D array.

    Returns:
        ``(data, spacing, affine)``: the array as stored (2D files get a trailing axis, trailing
        singleton axes are dropped), the spacing of its three axes in mm, the 4 x 4 affine.

    Raises:
        DataValidationError: Missing or unreadable file, zero size along an axis, or more than
            three non-singleton axes.
    """
    check_file_exists(path, "NIfTI")
    try:
        img = nib.load(str(path))
        shape = tuple(img.shape)
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=np.float64)
    except _READ_ERRORS as err:
        raise DataValidationError(f"Unreadable NIfTI file {path}: {err}; expected NIfTI.") from err
    # the header's shape: nibabel reads an empty array as shape (0,) whatever the header says
    check_non_empty(shape, str(path), "volume")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataValidationError(
            f"{path}: array of shape {data.shape}; expected a 3D volume per file (split 4D "
            "multi-channel images into <case>_0000, <case>_0001, ... files)."
        )
    spacing = tuple((list(zooms[:3]) + [1.0] * 3)[:3])
    return data, spacing, affine  # type: ignore[return-value]


def coarsest_axis(spacing: tuple[float, float, float]) -> int:
    """Index of the largest spacing; ties go to the last axis."""
    return max(range(3), key=lambda i: (spacing[i], i))
