"""Checks of what an evaluation step is given: one whole, unbatched volume (no Lightning).

:func:`check_evaluation_item` refuses an item the validation, test or prediction step cannot
score, naming the item (``case_id`` / ``case_index`` where present), the key or value at fault
and what was expected, before a bare shape error, ``KeyError`` or ``IndexError`` deep in
prediction or scoring. It returns the case index and the spacing the metrics use.

An evaluation item (:class:`~advmim_lightning.data.types.EvalItem`) is a dict:

- ``image``: ``C x D x H x W`` float tensor, ``C = in_channels`` (slices along ``D``);
- ``label``: ``D x H x W`` integer tensor, values in ``[0, num_classes)`` (validation, test);
- ``case_index``: the volume's position in its dataset, an int or a 0-d integer tensor
  (validation, test: under DDP each volume is scored once, by this index);
- ``case_id``: the volume's name (test: the rows of the per-case table; prediction: the file
  name);
- ``spacing``: the voxel size per axis ``(D, H, W)`` in mm, with ``spacing_known`` (default
  True) saying whether it came from the file.

**Spacing rule.** Distances and the NSD tolerance are in millimetres when the item carries a
known spacing, and in voxels otherwise: an item without ``spacing``, or with
``spacing_known=False``, is scored in voxels (as SSL4MIS h5 files without spacing are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "UNBATCHED_HINT",
    "case_index",
    "check_evaluation_item",
    "describe_item",
    "item_spacing",
]

Where = Literal["validation", "test", "prediction"]

#: What a refusal of a batched item suggests.
UNBATCHED_HINT = (
    "Evaluation steps take one unbatched item per step: AdvMIMDataModule's evaluation "
    "loaders yield them (one whole volume, no batch dimension). A loader of your own must do "
    "the same: DataLoader(dataset, batch_size=None), or batch_size=1 with "
    "collate_fn=lambda batch: batch[0]."
)


def _short(value: Any) -> str:
    """A value in a few characters: small tensors by value, larger ones by shape."""
    if isinstance(value, Tensor):
        if value.numel() <= 4:
            return f"tensor({value.tolist()})"
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_item(item: Any, where: str = "validation", batch_idx: int | None = None) -> str:
    """Name an evaluation item for messages: ``validation item 3 (case_id 'p01', case_index 3)``.

    Args:
        item: The item (a dict; anything else is named by its type).
        where: The step (``validation``, ``test``, ``prediction``).
        batch_idx: The step's index in its loader, when known.

    Returns:
        The item's name, with ``case_id`` and ``case_index`` where present.
    """
    name = f"{where} item" + (f" {batch_idx}" if batch_idx is not None else "")
    if not isinstance(item, Mapping):
        return name
    parts = [f"{key} {_short(item[key])}" for key in ("case_id", "case_index") if key in item]
    return f"{name} ({', '.join(parts)})" if parts else name


def item_spacing(
    item: Mapping[str, Any], name: str = "evaluation item"
) -> tuple[float, ...] | None:
    """The spacing the metrics use: the item's ``spacing``, or None (voxels) when unknown.

    Args:
        item: The evaluation item.
        name: The item's name for messages (:func:`describe_item`).

    Returns:
        Three positive finite numbers ``(D, H, W)``, or ``None`` when the item has no
        ``spacing`` or ``spacing_known`` is False (distances in voxels).

    Raises:
        ValueError: When ``spacing`` is present, known and not three positive finite numbers.
    """
    if "spacing" not in item or item["spacing"] is None or not item.get("spacing_known", True):
        return None
    raw = item["spacing"]
    expected = (
        "'spacing' must be the voxel size along (D, H, W) in mm, three positive finite numbers "
        "(leave it out, or set spacing_known=False, for distances in voxels)"
    )
    try:
        if isinstance(raw, Tensor):
            values = tuple(float(v) for v in raw.reshape(-1).tolist())
            shape_ok = raw.ndim == 1
        else:
            values = tuple(float(v) for v in raw)
            shape_ok = True
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: {expected}, got {_short(raw)}.") from error
    if not shape_ok or len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name}: {expected}, got {_short(raw)}.")
    return values


def case_index(item: Mapping[str, Any], name: str = "evaluation item") -> int:
    """The item's ``case_index`` as an int.

    Args:
        item: The evaluation item.
        name: The item's name for messages (:func:`describe_item`).

    Raises:
        ValueError: When ``case_index`` is missing, batched (a 1-element tensor) or not an
            integer.
    """
    if "case_index" not in item:
        raise ValueError(
            f"{name} has no 'case_index' (keys {sorted(map(str, item))}); expected the "
            "volume's position in its dataset (an int, 0 .. len(dataset) - 1), by which each "
            "volume is scored once under DDP."
        )
    raw = item["case_index"]
    if isinstance(raw, Tensor):
        if raw.ndim != 0 or raw.is_floating_point() or raw.is_complex():
            batched = raw.ndim == 1 and raw.numel() == 1
            raise ValueError(
                f"{name}: 'case_index' must be an int or a 0-d integer tensor, got "
                f"{_short(raw)} (dtype {raw.dtype})."
                + (
                    f" A 1-element tensor is what batching adds. {UNBATCHED_HINT}"
                    if batched
                    else ""
                )
            )
        return int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(
            f"{name}: 'case_index' must be an int or a 0-d integer tensor, got {_short(raw)} "
            f"({type(raw).__name__})."
        )
    return raw


def _check_image(item: Mapping[str, Any], in_channels: int, name: str) -> Tensor:
    if "image" not in item:
        raise ValueError(
            f"{name} has no 'image' (keys {sorted(map(str, item))}); expected a "
            f"C x D x H x W float tensor with C = in_channels = {in_channels}."
        )
    image = item["image"]
    if not isinstance(image, Tensor):
        raise TypeError(
            f"{name}: 'image' must be a C x D x H x W float tensor, got a {type(image).__name__}."
        )
    shape = tuple(image.shape)
    if image.ndim == 5 and shape[0] == 1 and shape[1] == in_channels:
        raise ValueError(
            f"{name}: 'image' has shape {shape}, a batch of one C x D x H x W volume "
            f"(C = in_channels = {in_channels}). {UNBATCHED_HINT}"
        )
    if image.ndim != 4 or shape[0] != in_channels or min(shape) == 0:
        hint = ""
        if image.ndim == 3:
            hint = " A D x H x W volume needs its channel axis: image.unsqueeze(0) for C = 1."
        raise ValueError(
            f"{name}: 'image' must be a C x D x H x W volume with C = in_channels = "
            f"{in_channels} (slices along D), got shape {shape}.{hint}"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"{name}: 'image' must be a float tensor (normalised as in training), got dtype "
            f"{image.dtype}."
        )
    return image


def _check_label(item: Mapping[str, Any], image: Tensor, num_classes: int, name: str) -> None:
    volume = tuple(image.shape[1:])
    if "label" not in item:
        raise ValueError(
            f"{name} has no 'label' (keys {sorted(map(str, item))}); validation and test score "
            f"a D x H x W integer label volume, here of shape {volume}."
        )
    label = item["label"]
    if not isinstance(label, Tensor):
        raise TypeError(
            f"{name}: 'label' must be a D x H x W integer tensor, got a {type(label).__name__}."
        )
    if tuple(label.shape) != volume:
        batched = label.ndim == 4 and label.shape[0] == 1 and tuple(label.shape[1:]) == volume
        raise ValueError(
            f"{name}: 'label' must be a D x H x W volume matching the image's "
            f"{tuple(image.shape)}, i.e. of shape {volume}, got {tuple(label.shape)}."
            + (f" {UNBATCHED_HINT}" if batched else "")
        )
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise TypeError(
            f"{name}: 'label' must hold integer class indices, got dtype {label.dtype}."
        )
    # One reduction per volume (evaluation, not the training step).
    low, high = (int(v) for v in label.aminmax())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name}: 'label' holds the value {bad} (values range over [{low}, {high}]); "
            f"expected class indices in [0, {num_classes}) for num_classes={num_classes}. "
            "Map ignore or extra labels (e.g. 255) to classes, or raise num_classes."
        )


def check_evaluation_item(
    item: Any,
    num_classes: int,
    in_channels: int,
    where: Where = "validation",
    batch_idx: int | None = None,
) -> tuple[int | None, tuple[float, ...] | None]:
    """Refuse an item an evaluation step cannot score; return its case index and spacing.

    Checks, naming the item and the key or value at fault: the item is a dict; ``image`` is a
    ``C x D x H x W`` float tensor with ``C = in_channels`` (a ``1 x C x D x H x W`` image, as a
    DataLoader with ``batch_size=1`` and the default collate makes, is refused as batched);
    for validation and test, ``label`` is a ``D x H x W`` integer tensor with values in
    ``[0, num_classes)`` (one ``aminmax`` per volume) and ``case_index`` an int or 0-d integer
    tensor; for test and prediction, ``case_id`` is present; ``spacing``, where present and
    known, is three positive finite numbers.

    Args:
        item: What the evaluation loader yielded.
        num_classes: Classes including background.
        in_channels: The networks' input channels.
        where: ``"validation"``, ``"test"`` or ``"prediction"`` (what is required, and the
            messages).
        batch_idx: The step's index in its loader, for the messages.

    Returns:
        ``(case_index, spacing)``: the case index (None for prediction items without one) and
        the spacing the metrics use (None: distances in voxels, see the module docstring).

    Raises:
        TypeError: When the item is not a dict, or ``image`` / ``label`` has the wrong type or
            dtype.
        ValueError: On a missing key, a batched or mis-shaped image or label, a label value
            outside ``[0, num_classes)``, a bad ``case_index`` or a bad ``spacing``.
    """
    if where not in ("validation", "test", "prediction"):
        raise ValueError(
            f"check_evaluation_item: where must be 'validation', 'test' or 'prediction', got "
            f"{where!r}."
        )
    name = describe_item(item, where, batch_idx)
    if not isinstance(item, Mapping):
        if isinstance(item, (tuple, list)):
            found = f"a {type(item).__name__} of {len(item)} entries"
        else:
            found = f"a {type(item).__name__}"
        raise TypeError(
            f"{name}: expected a dict with 'image' (C x D x H x W), 'label' (D x H x W), "
            f"'case_index' and 'case_id', got {found}. {UNBATCHED_HINT}"
        )
    image = _check_image(item, in_channels, name)
    if where != "prediction":
        _check_label(item, image, num_classes, name)
    if where != "validation" and "case_id" not in item:
        raise ValueError(
            f"{name} has no 'case_id' (keys {sorted(map(str, item))}); the {where} step names "
            "each volume by it (per-case table, prediction file names)."
        )
    if where == "prediction" and "case_index" not in item:
        index = None
    else:
        index = case_index(item, name)
    if "case_id" in item and not isinstance(item["case_id"], str):
        case_id = item["case_id"]
        if isinstance(case_id, (tuple, list)) and len(case_id) == 1:
            raise ValueError(
                f"{name}: 'case_id' is a {type(case_id).__name__} of one name, what batching "
                f"makes of a string. {UNBATCHED_HINT}"
            )
    return index, item_spacing(item, name)
