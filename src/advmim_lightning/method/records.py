"""What the module reports: the logged values of a training iteration, and the record of one
predicted case (no Lightning; ``AdvMIMModule`` hands them to its loggers and
to :class:`~advmim_lightning.evaluation.prediction_writer.PredictionWriter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def training_values(
    terms: Mapping[str, Tensor],
    total: Tensor,
    lr: float,
    iteration: int,
    ct_weight: float | Tensor | None,
    skipped_total: int | None,
) -> dict[str, Any]:
    """The ``train/...`` values of one logging iteration, copied off the step's tensors.

    Args:
        terms: The unweighted loss terms by name.
        total: The segmenters' weighted total.
        lr: The iteration's learning rate.
        iteration: The iteration (0-based); logged as the count done, ``iteration + 1``.
        ct_weight: The cross-teaching weight, or None when the method sees no unlabeled images.
        skipped_total: Iterations skipped so far (``nonfinite_check="skip"``), else None.

    Returns:
        ``train/<term>``, ``train/loss``, ``train/lr``, ``train/iteration`` and, where they
        apply, ``train/skipped_iterations`` and ``train/cross_teaching_weight``. Tensors are
        copies: loggers and ``callback_metrics`` keep them after the iteration.
    """
    logged: dict[str, Any] = {f"train/{k}": v.detach().clone() for k, v in terms.items()}
    if skipped_total is not None:
        logged["train/skipped_iterations"] = float(skipped_total)
    logged["train/loss"] = total.detach().clone()
    logged["train/lr"] = lr
    logged["train/iteration"] = float(iteration + 1)
    if ct_weight is not None:
        logged["train/cross_teaching_weight"] = ct_weight
    return logged


def prediction_record(item: Mapping[str, Any], labels: Tensor) -> dict[str, Any]:
    """One predicted case for the prediction writer, in the input file's array order.

    Args:
        item: The evaluation item (``case_id``, and ``slice_axis``, ``affine``, ``source``,
            ``spacing`` where known).
        labels: ``D x H x W`` label volume (slices along ``D``).

    Returns:
        ``{"case_id", "prediction" (uint8 array, original axis order), "affine", "source",
        "spacing"}``.
    """
    prediction = labels.to(torch.uint8).cpu().movedim(0, int(item.get("slice_axis", 0)))
    return {
        "case_id": str(item["case_id"]),
        "prediction": prediction.numpy(),
        "affine": item.get("affine"),
        "source": item.get("source"),
        "spacing": item.get("spacing"),
    }
