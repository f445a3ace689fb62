"""Overlay panels (image | ground truth | predictions) as RGB arrays and PNG files.

Pure NumPy plus Pillow for writing, so logging panels during validation needs no plotting
library. Colours: background transparent, then red, green, blue, yellow, ... per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: RGB colour of classes 1, 2, 3, ... (background is not drawn).
CLASS_COLOURS = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ],
    dtype=np.float32,
)


def overlay(image: np.ndarray, label: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """Blend a label map over a grey image.

    Args:
        image: ``H x W`` float image (any range; min-max scaled for display).
        label: ``H x W`` integer labels, or ``None`` for the plain image.
        alpha: Opacity of the label colours.

    Returns:
        ``H x W x 3`` uint8 RGB array.
    """
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    grey = (image - low) / (high - low) if high > low else np.zeros_like(image)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape:
            raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
        fg = label > 0
        colours = CLASS_COLOURS[(label[fg] - 1) % len(CLASS_COLOURS)]
        rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours
    return rgb.clip(0, 255).astype(np.uint8)


def panel(
    image: np.ndarray,
    label: np.ndarray | None,
    predictions: Mapping[str, np.ndarray],
    gap: int = 2,
) -> np.ndarray:
    """One row: image, image + ground truth, image + each prediction.

    Args:
        image: ``H x W`` image.
        label: ``H x W`` ground truth or ``None`` (that tile is then skipped).
        predictions: Name -> ``H x W`` predicted labels, drawn left to right.
        gap: White pixels between tiles.

    Returns:
        ``H x W' x 3`` uint8 RGB array.
    """
    tiles = [overlay(image, None)]
    if label is not None:
        tiles.append(overlay(image, label))
    tiles += [overlay(image, pred) for pred in predictions.values()]
    height = tiles[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for tile in tiles:
        row += [tile, spacer]
    return np.concatenate(row[:-1], axis=1)


def save_png(rows: Sequence[np.ndarray], path: str | Path, gap: int = 2) -> Path:
    """Stack panel rows vertically and write them as a PNG file.

    Returns:
        The path written.
    """
    from PIL import Image

    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=0)[:-gap]).save(path)
    return path
