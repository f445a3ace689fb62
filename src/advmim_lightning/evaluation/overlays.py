"""Overlay panels (image | ground truth | predictions) as RGB arrays and PNG files.

Pure NumPy plus Pillow for writing and lettering, so logging panels during validation needs no
plotting library. Colours are fixed per class index (the same in every panel and run):
background transparent, then red, green, blue, yellow, ... for classes 1, 2, 3, 4, ...
:func:`figure` (and :func:`save_png` with ``titles``) adds column titles above the rows and a
legend naming each class below them.
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


def figure(
    rows: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    scale: int = 1,
    gap: int = 2,
) -> np.ndarray:
    """Stack panel rows vertically, enlarge them, and letter column titles and a class legend.

    Args:
        rows: ``H_i x W_i x 3`` uint8 rows from :func:`panel` (drawn with the same ``gap``).
        titles: One title per tile of a row (e.g. ``["image", "ground truth", "CNN",
            "transformer"]``), written centred above each column; None for no title line.
        class_names: Names of all classes, background first; the legend shows the colour of
            each foreground class with its name. None for no legend.
        scale: Integer enlargement of the rows (nearest neighbour, so labels stay crisp).
        gap: White pixels between tiles and rows (before enlargement).

    Returns:
        ``H' x W' x 3`` uint8 RGB array.

    Raises:
        ValueError: On no rows, ``scale < 1``, or titles that do not split the rows into
            equal tiles.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("figure needs at least one panel row, got none")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    body = np.concatenate(padded, axis=0)[:-gap]
    body = np.repeat(np.repeat(body, scale, axis=0), scale, axis=1)
    font = ImageFont.load_default(size=7 * scale + 4)
    line = int(font.size * 1.6)
    header = line if titles else 0
    legend_lines: list[list[tuple[str, tuple[int, ...]]]] = []
    if class_names is not None and len(class_names) > 1:
        entries = [
            (str(name), tuple(int(c) for c in CLASS_COLOURS[(i - 1) % len(CLASS_COLOURS)]))
            for i, name in enumerate(class_names)
            if i > 0
        ]
        legend_lines = _wrap_legend(entries, font, body.shape[1])
    canvas = Image.new(
        "RGB", (body.shape[1], header + body.shape[0] + line * len(legend_lines)), "white"
    )
    canvas.paste(Image.fromarray(body), (0, header))
    draw = ImageDraw.Draw(canvas)
    if titles:
        tile = (rows[0].shape[1] - (len(titles) - 1) * gap) / len(titles)
        if tile <= 0 or not float(tile).is_integer():
            raise ValueError(
                f"{len(titles)} titles {list(titles)} do not split a row of width "
                f"{rows[0].shape[1]} into equal tiles separated by {gap} pixels"
            )
        for i, title in enumerate(titles):
            centre = (i * (tile + gap) + tile / 2) * scale
            text_width = draw.textlength(str(title), font=font)
            draw.text((centre - text_width / 2, line * 0.2), str(title), fill="black", font=font)
    top = header + body.shape[0]
    for number, entries in enumerate(legend_lines):
        x, y = line * 0.3, top + number * line + line * 0.2
        for name, colour in entries:
            side = font.size
            draw.rectangle([x, y, x + side, y + side], fill=colour, outline="black")
            x += side + line * 0.3
            draw.text((x, y - line * 0.05), name, fill="black", font=font)
            x += draw.textlength(name, font=font) + line
    return np.asarray(canvas)


def _wrap_legend(entries: list, font, width: int) -> list[list]:
    """Split legend entries into lines that fit ``width`` pixels."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list] = [[]]
    used = 0.0
    for entry in entries:
        need = font.size * 2.5 + draw.textlength(entry[0], font=font) + font.size
        if lines[-1] and used + need > width:
            lines.append([])
            used = 0.0
        lines[-1].append(entry)
        used += need
    return lines


def save_png(
    rows: Sequence[np.ndarray],
    path: str | Path,
    gap: int = 2,
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    scale: int = 1,
) -> Path:
    """Stack panel rows vertically and write them as a PNG file (see :func:`figure`).

    Returns:
        The path written.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure(rows, titles, class_names, scale, gap)).save(path, optimize=True)
    return path
