"""Slice-wise evaluation as SSL4MIS does it, and the per-case test table (no Lightning).

:func:`predict_volume` segments a ``C x D x H x W`` case slice by slice at the networks'
input size; :func:`write_test_csv` writes the per-case x per-class test metrics.
``docs/evaluation.md`` describes both.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmim_lightning.evaluation.case_metrics import METRIC_NAMES
from advmim_lightning.evaluation.resize import zoom_nearest
from advmim_lightning.method.config import NETWORK_NAMES


def probabilities(segmenters: Mapping[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    """Softmax of each network (and their mean, ``"ensemble"``) for ``B x C x H x W``."""
    probs = {name: net(x).float().softmax(1) for name, net in segmenters.items()}
    probs["ensemble"] = 0.5 * (probs["transformer"] + probs["cnn"])
    return probs


@torch.no_grad()
def predict_volume(
    segmenters: Mapping[str, nn.Module],
    image: Tensor,
    image_size: tuple[int, int],
    slice_batch: int,
    interpolation: str = "nearest",
) -> dict[str, Tensor]:
    """Label volumes of a whole case, predicted slice by slice as SSL4MIS evaluates.

    Each slice is resized to ``image_size``, segmented, the argmax taken at network
    resolution and resized back to the slice size. Both resizes use
    ``scipy.ndimage.zoom(order=0)``'s index mapping (:func:`advmim_lightning.evaluation.resize.
    zoom_nearest`, index gathers on the volume's device); ``interpolation="bilinear"``
    resizes the image bilinearly instead (``align_corners=True``, as the training option),
    the prediction still goes back with the zoom mapping.

    Args:
        segmenters: The networks by name (``transformer``, ``cnn``).
        image: ``C x D x H x W`` float volume (slices along ``D``).
        image_size: The networks' input size ``(H, W)``.
        slice_batch: Slices predicted at once.
        interpolation: ``"nearest"`` or ``"bilinear"`` (how slices go to ``image_size``).

    Returns:
        ``{"transformer", "cnn", "ensemble"}`` -> ``D x H x W`` int64 label volumes.

    Raises:
        ValueError: When ``image`` is not 4-D.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a C x D x H x W volume, got shape {tuple(image.shape)}")
    slices = image.movedim(1, 0)  # D x C x H x W
    size = (int(slices.shape[-2]), int(slices.shape[-1]))
    resize = size != tuple(image_size)
    bilinear = interpolation == "bilinear"
    out: dict[str, list[Tensor]] = {name: [] for name in (*NETWORK_NAMES, "ensemble")}
    for start in range(0, slices.shape[0], slice_batch):
        chunk = slices[start : start + slice_batch]
        if resize and bilinear:
            chunk = F.interpolate(chunk, size=image_size, mode="bilinear", align_corners=True)
        elif resize:
            chunk = zoom_nearest(chunk, image_size)
        for name, prob in probabilities(segmenters, chunk).items():
            labels = prob.argmax(1)  # B x h x w int64
            out[name].append(zoom_nearest(labels, size) if resize else labels)
    return {name: torch.cat(parts) for name, parts in out.items()}


def write_test_csv(
    path: Path,
    indices: Tensor,
    table: Tensor,
    summary: Mapping[str, Tensor],
    class_names: list[str],
    case_ids: Mapping[int, str],
) -> Path:
    """Write the per-case x per-class test metrics and a summary row as CSV.

    Args:
        path: The file to write (its folder is created).
        indices: ``N`` case indices.
        table: ``N x len(METRIC_NAMES) x (C - 1)`` metric values.
        summary: The aggregated metrics (``dice_mean``, ``dice_<class>``, ...).
        class_names: The foreground class names (``C - 1``), in column order.
        case_ids: The case id of each index; an index without one is written as a number.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [f"{m}_{c}" for m in METRIC_NAMES for c in class_names]
    columns += [f"{m}_mean" for m in METRIC_NAMES]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", *columns])
        for index, values in zip(indices.tolist(), table, strict=True):
            row = [float(v) for v in values.flatten()]
            row += [float(values[i].mean()) for i in range(len(METRIC_NAMES))]
            writer.writerow([case_ids.get(index, str(index)), *(f"{v:.6g}" for v in row)])
        mean_row = [float(summary[f"{m}_{c}"]) for m in METRIC_NAMES for c in class_names]
        mean_row += [float(summary[f"{m}_mean"]) for m in METRIC_NAMES]
        writer.writerow(["mean", *(f"{v:.6g}" for v in mean_row)])
    return path
