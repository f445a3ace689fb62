"""Intensity normalisation, SSL4MIS-style augmentation and resizing of 2D slices.

The augmentation reproduces SSL4MIS's ``RandomGenerator`` (the ACDC training transform used by
the cross-teaching baseline and AdvMIM), written with torch tensor ops:

- with probability ``rot_flip_probability`` (0.5): ``rot90`` by ``k`` in ``0..3`` quarter turns,
  then a flip along a random axis;
- otherwise, with probability ``rotate_probability``: a rotation by an integer angle drawn from
  ``[-20, 20)`` degrees about the image centre, nearest-neighbour for image and label, zero
  outside (``scipy.ndimage.rotate(order=0, reshape=False)``);
- then a resize to the network input size, nearest for the label and, as SSL4MIS does, nearest
  for the image too (``scipy.ndimage.zoom(order=0)``'s index mapping, shared with evaluation in
  :mod:`advmim_lightning.evaluation.resize`), or bilinear for the image as an option.

SSL4MIS draws the rotation in an ``elif`` after a second coin flip, so with its defaults a slice
is rot90-flipped half of the time, rotated a quarter of the time and left alone a quarter of the
time: ``rotate_probability=0.5`` reproduces that; ``rotate_probability=1.0`` gives the reading
"otherwise rotate" (rotation half of the time).

Random parameters are never drawn from a global generator: :meth:`SliceAugmenter.params` takes
a key (seed, stream, sample position) and derives them by hashing, so every sample is augmented
the same way in any worker and after a resume.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from advmim_lightning.evaluation.resize import nearest_resize_indices, zoom_nearest
from advmim_lightning.method.randomness import keyed_uniforms

__all__ = [
    "IMAGE_INTERPOLATIONS",
    "NORMALIZATIONS",
    "AugmentParams",
    "ImageInterpolation",
    "Normalization",
    "SliceAugmenter",
    "nearest_resize_indices",
    "normalize_volume",
    "rotation_source_indices",
]

Normalization = Literal["minmax", "zscore", "ct_window", "none"]
ImageInterpolation = Literal["nearest", "bilinear"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "zscore", "ct_window", "none")
IMAGE_INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear")


def normalize_volume(
    image: np.ndarray,
    method: str = "minmax",
    window_level: float = 40.0,
    window_width: float = 400.0,
) -> np.ndarray:
    """Normalises the intensities of a whole volume, each channel on its own.

    Args:
        image: ``C x ...`` array (channels first, any number of spatial axes).
        method: ``"minmax"`` maps each channel's range to ``[0, 1]`` (as SSL4MIS prepares ACDC;
            a constant channel becomes 0); ``"zscore"`` subtracts the channel mean and divides by
            its standard deviation (a constant channel becomes 0); ``"ct_window"`` clips to
            ``[level - width / 2, level + width / 2]`` and maps that window to ``[0, 1]``;
            ``"none"`` only converts to float32.
        window_level: Centre of the CT window (Hounsfield units), for ``"ct_window"``.
        window_width: Width of the CT window, for ``"ct_window"``; must be positive.

    Returns:
        ``C x ...`` C-contiguous float32 array (never a view of ``image``).

    Raises:
        ValueError: If ``method`` is unknown or ``window_width`` is not positive.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    out = np.ascontiguousarray(image, dtype=np.float32)
    if method == "none":
        return out.copy() if np.shares_memory(out, image) else out
    if method == "ct_window":
        if window_width <= 0:
            raise ValueError(f"window_width must be > 0, got {window_width}")
        low = window_level - window_width / 2.0
        return ((np.clip(out, low, low + window_width) - low) / window_width).astype(np.float32)
    result = np.empty(out.shape, dtype=np.float32)  # C-contiguous, so the reshape below is a view
    flat = result.reshape(out.shape[0], -1)
    for c, x in enumerate(out.reshape(out.shape[0], -1)):
        x = x.astype(np.float64)
        if method == "minmax":
            low, high = x.min(), x.max()
            flat[c] = (x - low) / (high - low) if high > low else 0.0
        else:
            mean, std = x.mean(), x.std()
            flat[c] = (x - mean) / std if std > 0 else 0.0
    return result


@dataclass(frozen=True)
class AugmentParams:
    """Random parameters of one slice's augmentation.

    Attributes:
        rot_flip: Whether the rot90 + flip branch is taken.
        k: Number of quarter turns (``0..3``), counter-clockwise as ``np.rot90``.
        flip_axis: Axis flipped after the quarter turns (0 rows, 1 columns).
        rotate: Whether the free rotation branch is taken (never together with ``rot_flip``).
        angle: Rotation angle in integer degrees (counter-clockwise as ``scipy.ndimage.rotate``).
    """

    rot_flip: bool
    k: int
    flip_axis: int
    rotate: bool
    angle: int


@functools.lru_cache(maxsize=64)
def _grid_offsets(height: int, width: int, size_out_h: int, size_out_w: int, nearest: bool):
    if nearest:
        rows = nearest_resize_indices(height, size_out_h).to(torch.float64)
        cols = nearest_resize_indices(width, size_out_w).to(torch.float64)
    else:
        rows = torch.arange(height, dtype=torch.float64)
        cols = torch.arange(width, dtype=torch.float64)
    return (rows - (height - 1) / 2.0)[:, None], (cols - (width - 1) / 2.0)[None, :]


def rotation_source_indices(
    height: int, width: int, angle: float, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Flat source indices of a nearest-neighbour rotation about the image centre.

    Matches ``scipy.ndimage.rotate(x, angle, order=0, reshape=False, mode="constant")``: output
    pixel ``(r, c)`` reads input ``(cr + cos a (r - cr) + sin a (c - cc),
    cc - sin a (r - cr) + cos a (c - cc))`` rounded to the nearest pixel, with
    ``(cr, cc)`` the centre; a source outside ``[0, H - 1] x [0, W - 1]`` reads the fill value.

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        angle: Angle in degrees.
        rows: ``(h, 1)`` float64 output row coordinates minus ``cr``.
        cols: ``(1, w)`` float64 output column coordinates minus ``cc``.

    Returns:
        ``h * w`` int64 flat indices into a ``H * W + 1`` vector whose last element is the fill
        value (index ``H * W`` marks "outside").
    """
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    cr, cc = (height - 1) / 2.0, (width - 1) / 2.0
    src_r = rows * cos + cols * sin + cr
    src_c = cols * cos - rows * sin + cc
    inside = (src_r >= 0) & (src_r <= height - 1) & (src_c >= 0) & (src_c <= width - 1)
    ir = torch.floor(src_r + 0.5).to(torch.int64)
    ic = torch.floor(src_c + 0.5).to(torch.int64)
    flat = torch.where(inside, ir * width + ic, height * width)
    return flat.reshape(-1)


def _rotate_zoom_index(
    height: int, width: int, out_h: int, out_w: int, angle: float
) -> torch.Tensor:
    """Flat indices (``H * W`` = fill) of a nearest rotation followed by the zoom resize."""
    rows, cols = _grid_offsets(height, width, out_h, out_w, True)
    index = rotation_source_indices(height, width, angle, rows, cols)
    fill = _zoom_fill(height, width, out_h, out_w)
    return index if fill is None else index.masked_fill_(fill, height * width)


@functools.lru_cache(maxsize=64)
def _zoom_fill(height: int, width: int, out_h: int, out_w: int) -> torch.Tensor | None:
    """Flat mask of the outputs where ``zoom`` reads its fill value, or None if there are none."""
    r, c = nearest_resize_indices(height, out_h), nearest_resize_indices(width, out_w)
    fill = ((r < 0)[:, None] | (c < 0)[None, :]).reshape(-1)
    return fill if bool(fill.any()) else None


def _gather(flat_image: torch.Tensor, index: torch.Tensor, pad: bool) -> torch.Tensor:
    if pad:
        flat_image = torch.cat([flat_image, flat_image.new_zeros(flat_image.shape[0], 1)], dim=1)
    return flat_image.index_select(1, index)


class SliceAugmenter:
    """SSL4MIS ``RandomGenerator``-equivalent augmentation and resize of one 2D slice.

    Args:
        output_size: ``(H_out, W_out)`` network input size.
        image_interpolation: ``"nearest"`` (SSL4MIS) or ``"bilinear"`` for the image resize;
            labels are always resized with nearest neighbour.
        augment: False skips the random transforms (resize only).
        rot_flip_probability: Probability of the rot90 + flip branch.
        rotate_probability: Probability of the free rotation when the rot90 + flip branch is not
            taken (0.5 as SSL4MIS's ``elif``; 1.0 for "otherwise rotate").
        angle_range: Integer angles are drawn from ``[low, high)`` degrees.

    Raises:
        ValueError: On sizes below 1, probabilities outside ``[0, 1]``, an empty angle range or
            an unknown interpolation.
    """

    def __init__(
        self,
        output_size: tuple[int, int],
        image_interpolation: str = "nearest",
        augment: bool = True,
        rot_flip_probability: float = 0.5,
        rotate_probability: float = 0.5,
        angle_range: tuple[int, int] = (-20, 20),
    ) -> None:
        if len(output_size) != 2 or any(int(s) != s or s < 1 for s in output_size):
            raise ValueError(f"output_size must be two positive integers, got {output_size!r}")
        if image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation must be one of {IMAGE_INTERPOLATIONS}, "
                f"got {image_interpolation!r}"
            )
        for name, p in (
            ("rot_flip_probability", rot_flip_probability),
            ("rotate_probability", rotate_probability),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        low, high = angle_range
        if int(low) != low or int(high) != high or high <= low:
            raise ValueError(
                f"angle_range must be integers (low, high) with low < high, got {angle_range!r}"
            )
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.image_interpolation = image_interpolation
        self.augment = augment
        self.rot_flip_probability = float(rot_flip_probability)
        self.rotate_probability = float(rotate_probability)
        self.angle_range = (int(low), int(high))

    def params(self, *key: int) -> AugmentParams | None:
        """Draws the augmentation parameters for the sample identified by ``key``.

        Args:
            *key: Integers identifying the draw, e.g. ``(seed, stream, position)``.

        Returns:
            The parameters, or None when augmentation is off.
        """
        if not self.augment:
            return None
        u = keyed_uniforms(5, *key)
        rot_flip = u[0] < self.rot_flip_probability
        rotate = (not rot_flip) and u[1] < self.rotate_probability
        low, high = self.angle_range
        return AugmentParams(
            rot_flip=rot_flip,
            k=min(int(u[2] * 4), 3),
            flip_axis=min(int(u[3] * 2), 1),
            rotate=rotate,
            angle=low + min(int(u[4] * (high - low)), high - low - 1),
        )

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, params: AugmentParams | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augments and resizes one slice.

        Args:
            image: ``C x H x W`` float32.
            label: ``H x W`` integer labels, or None for an unlabeled slice.
            params: From :meth:`params`; None only resizes.

        Returns:
            ``(image, label)``: ``C x H_out x W_out`` float32 and ``H_out x W_out`` int64 (or
            None).
        """
        if params is not None and params.rot_flip:
            image = torch.rot90(image, params.k, dims=(1, 2)).flip(1 + params.flip_axis)
            if label is not None:
                label = torch.rot90(label, params.k, dims=(0, 1)).flip(params.flip_axis)
        rotate = params is not None and params.rotate and params.angle != 0
        angle = params.angle if rotate else 0
        channels, height, width = image.shape
        out_h, out_w = self.output_size
        # With a rotation, rotation and zoom compose into one gather (outside reads 0).
        rotate_zoom = _rotate_zoom_index(height, width, out_h, out_w, angle) if rotate else None
        flat_image = image.reshape(channels, height * width)
        if self.image_interpolation == "nearest":
            if rotate_zoom is None:
                out_image = zoom_nearest(image, (out_h, out_w))
            else:
                out_image = _gather(flat_image, rotate_zoom, True).reshape(channels, out_h, out_w)
        else:
            if rotate:
                rows, cols = _grid_offsets(height, width, out_h, out_w, False)
                index = rotation_source_indices(height, width, angle, rows, cols)
                image = _gather(flat_image, index, True).reshape(channels, height, width)
            if (height, width) == (out_h, out_w):
                out_image = image.contiguous()
            else:
                out_image = F.interpolate(
                    image[None], size=(out_h, out_w), mode="bilinear", align_corners=True
                )[0]
        out_label = None
        if label is not None:
            label = label.to(torch.int64)
            if rotate_zoom is None:
                out_label = zoom_nearest(label, (out_h, out_w))
            else:
                flat_label = label.reshape(1, height * width)
                out_label = _gather(flat_label, rotate_zoom, True).reshape(out_h, out_w)
        return out_image.to(torch.float32), out_label
