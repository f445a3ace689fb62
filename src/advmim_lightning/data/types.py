"""Typed records of the data package: training batches, evaluation items and loaded volumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

__all__ = ["EvalItem", "LabeledBatch", "TrainingBatch", "UnlabeledBatch", "Volume"]


class LabeledBatch(TypedDict):
    """Labeled part of a training batch.

    Attributes:
        image: ``B_l x C x H x W`` float32, normalised and augmented.
        label: ``B_l x H x W`` int64 class indices in ``[0, num_classes)``.
        case_id: ``B_l`` volume ids the slices come from (e.g. ``"patient001_frame01"``).
    """

    image: torch.Tensor
    label: torch.Tensor
    case_id: list[str]


class UnlabeledBatch(TypedDict):
    """Unlabeled part of a training batch: images only, labels never reach it.

    Attributes:
        image: ``B_u x C x H x W`` float32, normalised and augmented.
        case_id: ``B_u`` volume ids.
    """

    image: torch.Tensor
    case_id: list[str]


class _TrainingBatchRequired(TypedDict):
    labeled: LabeledBatch


class TrainingBatch(_TrainingBatchRequired, total=False):
    """A training batch: ``{"labeled": ..., "unlabeled": ...}``.

    ``"unlabeled"`` is absent only when the data module was built with
    ``require_unlabeled=False`` and the unlabeled pool is empty.
    """

    unlabeled: UnlabeledBatch


class _EvalItemRequired(TypedDict):
    image: torch.Tensor
    case_id: str
    case_index: int
    spacing: tuple[float, float, float]
    spacing_known: bool
    affine: torch.Tensor
    slice_axis: int
    source: str


class EvalItem(_EvalItemRequired, total=False):
    """One whole volume for validation, test or prediction (batch size 1, unwrapped).

    Attributes:
        image: ``C x D x H x W`` float32, normalised like training, original in-plane size.
        label: ``D x H x W`` int64; absent when the case has no label (prediction on images only).
        case_id: Volume id, unique within the split (file stem, e.g. ``"patient001_frame01"``).
        case_index: Stable index of the volume within its split (``0..len(split) - 1``).
        spacing: Voxel spacing in mm along ``(D, H, W)``; ``(1, 1, 1)`` when unknown.
        spacing_known: False when the file carries no spacing (SSL4MIS h5 without the
            ``spacing`` attribute); distances are then in voxels.
        affine: ``4 x 4`` float64 voxel-to-world matrix of the *original* array (before the
            slice axis was moved to the front).
        slice_axis: Axis of the original array that became ``D``; a prediction ``D x H x W``
            goes back to the original orientation with ``np.moveaxis(pred, 0, slice_axis)``.
        source: Path of the original image file, or ``"phantom:<case>"``.
    """

    label: torch.Tensor


@dataclass
class Volume:
    """A loaded, normalised volume with its geometry.

    Attributes:
        case_id: Volume id, unique within the dataset (e.g. ``"patient001_frame01"``).
        group_id: Case (patient) id used for splits and leakage checks (e.g. ``"patient001"``).
        image: ``C x D x H x W`` float32 (or a read-only memory map of it), normalised.
        label: ``D x H x W`` unsigned/short integer labels, or None when the volume is unlabeled
            (or when it is used in the unlabeled pool, where labels are dropped).
        spacing: Voxel spacing along ``(D, H, W)`` in mm.
        spacing_known: Whether the spacing came from the file.
        affine: ``4 x 4`` float64 voxel-to-world matrix of the original array.
        slice_axis: Axis of the original array moved to position 0.
        source: Original image file or ``"phantom:<case>"``.
    """

    case_id: str
    group_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    spacing_known: bool
    affine: np.ndarray
    slice_axis: int
    source: str

    @property
    def num_slices(self) -> int:
        """Number of 2D slices along ``D``."""
        return int(self.image.shape[1])
