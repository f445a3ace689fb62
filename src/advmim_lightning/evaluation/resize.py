"""Nearest-neighbour resizing of 2D slices with ``scipy.ndimage.zoom(order=0)``'s index mapping.

SSL4MIS (and so the published AdvMIM code) resizes every slice with
``zoom(x, (h_out / h, w_out / w), order=0)``: during training (image and label) and during
evaluation (the slice to the network size, then the argmax prediction back to the slice size).
That mapping is not ``F.interpolate(mode="nearest")``'s (which reads ``floor(o * in / out)``):
``zoom`` aligns the corner pixels, output index ``o`` reading input index
``floor(o * (in - 1) / (out - 1) + 0.5)`` computed in float64, and in its default
``mode="constant"`` an output whose coordinate lands past ``in - 1`` by rounding (only ever the
last row or column, e.g. 32 -> 224) reads the fill value 0 instead of the last input pixel.

:func:`nearest_resize_indices` builds that mapping per axis (cached, on the CPU);
:func:`zoom_nearest` applies it to tensors on any device as two index gathers (the index
tensors are copied to a device once per size pair, not per slice). The training transform
(:mod:`advmim_lightning.data.transforms`) and :meth:`AdvMIMModule.predict_volume
<advmim_lightning.method.lightning_module.AdvMIMModule.predict_volume>` both use them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["nearest_resize_indices", "zoom_nearest"]


@functools.lru_cache(maxsize=256)
def nearest_resize_indices(size_in: int, size_out: int) -> torch.Tensor:
    """Source indices of ``scipy.ndimage.zoom(order=0)`` along one axis.

    Output index ``o`` reads input index ``floor(c + 0.5)`` with ``c = o * ((size_in - 1) /
    (size_out - 1))`` in float64 (corner pixels map to corner pixels, ties round up); where
    ``c > size_in - 1`` (float rounding at the last output) ``zoom`` reads its fill value, marked
    here by ``-1``. A length of 1 on either side maps every output to index 0, as ``zoom``.

    Args:
        size_in: Input length (>= 1).
        size_out: Output length (>= 1).

    Returns:
        ``size_out`` int64 indices in ``[0, size_in)``, or ``-1`` for "fill value" (cached:
        do not modify in place).

    Raises:
        ValueError: If a length is below 1.
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"resize lengths must be >= 1, got {size_in} -> {size_out}")
    if size_out == 1 or size_in == 1:
        return torch.zeros(size_out, dtype=torch.int64)
    coords = torch.arange(size_out, dtype=torch.float64) * ((size_in - 1) / (size_out - 1))
    index = torch.floor(coords + 0.5).to(torch.int64)
    return torch.where(coords > size_in - 1, -1, index)


@functools.lru_cache(maxsize=64)
def _gather_indices(size_in: int, size_out: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """The indices of :func:`nearest_resize_indices` on ``device``, with "fill" as ``size_in``.

    Returns:
        ``(indices, pad)``: ``pad`` tells whether an index reads the fill value (position
        ``size_in`` of the input padded with one zero), known on the host without a sync.
    """
    index = nearest_resize_indices(size_in, size_out)
    outside = index < 0
    return torch.where(outside, size_in, index).to(device), bool(outside.any())


def zoom_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two axes exactly as ``scipy.ndimage.zoom(x, factors, order=0)``.

    ``factors`` are ``size[i] / x.shape[-2 + i]`` on the last two axes and 1 elsewhere; pixels
    where ``zoom`` reads its fill value get 0. Works for any dtype (images and label maps) on any
    device, without host synchronisation.

    Args:
        x: ``... x H x W`` tensor.
        size: ``(H_out, W_out)``.

    Returns:
        ``... x H_out x W_out`` tensor of ``x``'s dtype and device (always a new tensor).
    """
    height, width = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (height, width) == (out_h, out_w):
        return x.clone()
    rows, pad_rows = _gather_indices(height, out_h, x.device)
    cols, pad_cols = _gather_indices(width, out_w, x.device)
    if pad_rows or pad_cols:
        x = F.pad(x, (0, int(pad_cols), 0, int(pad_rows)))
    return x.index_select(-2, rows).index_select(-1, cols)
