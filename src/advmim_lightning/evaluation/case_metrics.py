"""Per-case 3D scores of one volume: per-class Dice, HD95, average surface distance and NSD.

:func:`compute_case_metrics` scores one whole volume into a table with one row per metric of
:data:`METRIC_NAMES` and one column per foreground class. The checks of the NSD options and
the metric names are shared with
:class:`~advmim_lightning.evaluation.metrics.SegmentationMetrics`, which accumulates these
tables over cases.

Definitions, per foreground class of a volume, as the published code (medpy via SSL4MIS)
reports them:

- Surfaces: the mask's voxels that its binary erosion with the connectivity-1 structure removes
  (mask XOR erosion; voxels on the volume's border count as surface). Surface distances: from
  each surface voxel of one mask, the Euclidean distance to the nearest surface voxel of the
  other. Both come from MONAI (``monai.metrics.utils.get_edge_surface_distance``).
- ``hd95``: the 95th percentile (linear interpolation, ``numpy.percentile``'s default) of the
  surface distances of *both* directions pooled together, as medpy's ``hd95``. MONAI's
  ``compute_hausdorff_distance(percentile=95)`` takes the larger of the two one-way 95th
  percentiles instead, which is larger when the errors sit on one side (a distant
  false-positive blob can hold over 5 % of the predicted surface but under 5 % of both
  surfaces together).
- ``asd``: the mean distance from the predicted surface to the ground-truth surface, as medpy's
  ``asd(prediction, label)`` that SSL4MIS reports (not the symmetric ``assd``).
- ``nsd``: the normalised surface Dice at ``nsd_tolerance`` (Nikolov et al., 2021): the share
  of surface voxels of both masks within the tolerance of the other surface (MONAI's
  ``compute_surface_dice`` without sub-voxels). The tolerance is one number for every class
  or one per foreground class (the published ACDC evaluation: 5, 3, 3 mm for RV, Myo, LV).
  With ``nsd_zero_below_dice=t`` a class whose Dice is below ``t`` scores NSD 0 (the
  published evaluation uses 0.2); the default ``None`` keeps the NSD as measured.
- ``dice``: ``2 |P & G| / (|P| + |G|)`` (MONAI's ``compute_dice``).

Distances (HD95, ASD) and the NSD tolerance are in physical units (mm) when a voxel spacing is
given, in voxels otherwise (the public code measures in voxels).

Empty-mask rule, per foreground class and volume (the definitions above have no value in these
cases; they are scored as follows):

========================================  ======  ==========  ==========  =====
case                                      Dice    HD95        ASD         NSD
========================================  ======  ==========  ==========  =====
prediction and ground truth both empty    1       0           0           1
exactly one of them empty                 0       diagonal    diagonal    0
========================================  ======  ==========  ==========  =====

where *diagonal* is the length of the volume's field-of-view diagonal,
``sqrt(sum((shape_i * spacing_i) ** 2))`` (in voxels without spacing). No distance measured
inside the volume can exceed it, so a missed or hallucinated class gets the worst finite score
and stays averageable. (The public AdvMIM/SSL4MIS evaluation scores HD95 = 0 when a class is not
predicted, which rewards missing it; this library does not.)

These functions run at evaluation time and synchronise with the host (volumes are moved to the
CPU, where MONAI uses a KD-tree for surface distances).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["METRIC_NAMES", "compute_case_metrics"]

METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "asd", "nsd")
"""Row order of the tables returned by :func:`compute_case_metrics`."""


def _check_spacing(spacing: Sequence[float] | Tensor | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"case_metrics.py: spacing must be {ndim} positive finite numbers in the volume's axis "
            f"order, got {spacing!r}."
        ) from error
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"case_metrics.py: spacing must be {ndim} positive finite numbers in the volume's axis "
            f"order, got {values}."
        )
    return values


def check_nsd_options(
    nsd_tolerance: float | Sequence[float],
    nsd_zero_below_dice: float | None,
    num_classes: int,
    where: str,
) -> tuple[tuple[float, ...], float | None]:
    """Validate the NSD tolerance(s) and the Dice threshold.

    Args:
        nsd_tolerance: one finite number >= 0 for every foreground class, or a sequence of
            ``num_classes - 1`` such numbers (classes 1 .. C-1).
        nsd_zero_below_dice: ``None``, or a finite number in ``[0, 1]``.
        num_classes: number of classes including background.
        where: the file and the caller, for the messages.

    Returns:
        The tolerance of each foreground class (length ``num_classes - 1``) and the threshold.

    Raises:
        ValueError: on a tolerance that is not finite and >= 0, a sequence of the wrong length,
            or a threshold outside ``[0, 1]``.
    """
    count = num_classes - 1
    if isinstance(nsd_tolerance, (str, bytes)):
        raise ValueError(
            f"{where}: nsd_tolerance must be a finite number >= 0 or {count} such "
            f"numbers (one per foreground class), got {nsd_tolerance!r}."
        )
    if hasattr(nsd_tolerance, "tolist"):  # a tensor or NumPy array (or scalar)
        nsd_tolerance = nsd_tolerance.tolist()
    per_class = isinstance(nsd_tolerance, Sequence)
    if per_class:
        if len(nsd_tolerance) != count:
            raise ValueError(
                f"{where}: nsd_tolerance must give one value per foreground class "
                f"1..{count} ({count} values), got {len(nsd_tolerance)}: {list(nsd_tolerance)}."
            )
        raw = list(nsd_tolerance)
    else:
        raw = [nsd_tolerance] * count
    tolerances: list[float] = []
    for position, value in enumerate(raw):
        which = f" (class {position + 1})" if per_class else ""
        try:
            number = float(value)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}: nsd_tolerance must be a finite number >= 0, got {value!r}{which}."
            ) from error
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(
                f"{where}: nsd_tolerance must be a finite number >= 0, got {number}{which}."
            )
        tolerances.append(number)
    threshold = nsd_zero_below_dice
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}: nsd_zero_below_dice must be None or a number in [0, 1], "
                f"got {nsd_zero_below_dice!r}."
            ) from error
        if not (0.0 <= threshold <= 1.0):
            raise ValueError(
                f"{where}: nsd_zero_below_dice must be None or a number in [0, 1] "
                f"(the published evaluation uses 0.2), got {threshold}."
            )
    return tuple(tolerances), threshold


def _check_metric_names(metric_names: Sequence[str], where: str) -> tuple[str, ...]:
    names = tuple(metric_names)
    unknown = [n for n in names if n not in METRIC_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{where}: metric_names must be a non-empty subset of {METRIC_NAMES} "
            f"without repeats, got {names}."
        )
    return names


def _surface_metrics(
    prediction: Tensor,
    label: Tensor,
    spacing: tuple[float, ...] | None,
    nsd_tolerance: float,
    class_index: int,
) -> dict[str, float]:
    """HD95 (medpy's ``hd95``), ASD (medpy's ``asd``) and NSD of two non-empty binary masks.

    The surface voxels (mask XOR its erosion with the connectivity-1 structure) and the
    Euclidean distances from each surface voxel to the other mask's surface, in both
    directions, come from MONAI's ``get_edge_surface_distance``; the statistics are taken here.

    Args:
        prediction: D x H x W (or H x W) bool mask, not empty.
        label: bool mask of the same shape, not empty.
        spacing: voxel size per axis, or ``None`` for voxels.
        nsd_tolerance: NSD tolerance in the units of ``spacing``.
        class_index: the class, for MONAI's messages.

    Returns:
        ``{"hd95", "asd", "nsd"}`` -> value.
    """
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        # Some MONAI versions call their own deprecated get_mask_edges argument internally.
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy.*", category=FutureWarning
        )
        _, distances, _ = get_edge_surface_distance(
            prediction, label, spacing=spacing, symmetric=True, class_index=class_index
        )
    pred_to_label, label_to_pred = (d.reshape(-1).cpu() for d in distances)
    pooled = torch.cat([pred_to_label, label_to_pred])
    return {
        # Both directions pooled, then the 95th percentile with linear interpolation
        # (MONAI's compute_hausdorff_distance instead takes the larger of the two one-way 95th
        # percentiles)
        # (numpy's, as medpy; torch.quantile refuses over 2**24 values).
        "hd95": float(np.percentile(pooled.to(torch.float64).numpy(), 95)),
        # medpy's asd(prediction, label): mean distance from the predicted surface.
        "asd": float(pred_to_label.to(torch.float64).mean()),
        # MONAI's compute_surface_dice without sub-voxels, on the same distances.
        "nsd": float((pooled <= nsd_tolerance).sum()) / pooled.numel(),
    }


def compute_case_metrics(
    prediction: Tensor,
    label: Tensor,
    num_classes: int,
    spacing: Sequence[float] | Tensor | None = None,
    nsd_tolerance: float | Sequence[float] = 1.0,
    metric_names: Sequence[str] = METRIC_NAMES,
    nsd_zero_below_dice: float | None = None,
) -> Tensor:
    """Dice, HD95, ASD and NSD of every foreground class of one volume.

    HD95 pools the surface distances of both directions (medpy's ``hd95``), ASD is medpy's
    ``asd`` from the prediction's surface; see the module docstring for the definitions.

    Args:
        prediction: predicted class indices of a whole case, shape D x H x W (a 2-D H x W
            image also works), integer dtype, values in ``[0, num_classes)``.
        label: ground-truth class indices, same shape and value range.
        num_classes: number of classes including background (class 0, which is not scored).
        spacing: voxel size per axis in the same axis order as the volume (e.g. mm), or ``None``
            for distances in voxels.
        nsd_tolerance: NSD tolerance, in the units of ``spacing`` (voxels without spacing):
            one number for every class, or a sequence of ``num_classes - 1`` numbers, one per
            foreground class 1 .. C-1 (the published ACDC evaluation: ``(5, 3, 3)`` mm).
        metric_names: which rows to compute, in this order; a subset of :data:`METRIC_NAMES`
            (e.g. ``("dice",)`` skips the surface-distance computations).
        nsd_zero_below_dice: ``None`` (default): NSD as measured. A number ``t`` in
            ``[0, 1]``: a class whose Dice is below ``t`` scores NSD 0 (the published
            evaluation's rule, ``t = 0.2``). Dice is computed for this even when
            ``metric_names`` leaves it out.

    Returns:
        float64 CPU tensor of shape 4 x (num_classes - 1) (``len(metric_names)`` rows in
        general): rows Dice, HD95, ASD, NSD (see :data:`METRIC_NAMES`), columns classes
        1 .. num_classes - 1. Empty masks are scored by the rule in the module docstring, so the
        table contains no nan or inf.

    Raises:
        ValueError: on mismatched shapes, fewer than 2 classes, labels out of range, a bad
            spacing, a negative tolerance, a tolerance sequence of the wrong length, a Dice
            threshold outside ``[0, 1]`` or unknown metric names.
        TypeError: if ``prediction`` or ``label`` is not an integer tensor.
    """
    if num_classes < 2:
        raise ValueError(f"case_metrics.py: num_classes must be >= 2, got {num_classes}.")
    tolerances, zero_below = check_nsd_options(
        nsd_tolerance, nsd_zero_below_dice, num_classes, "case_metrics.py compute_case_metrics"
    )
    if prediction.shape != label.shape or prediction.ndim not in (2, 3):
        raise ValueError(
            "case_metrics.py: prediction and label must be volumes of equal shape D x H x W "
            f"(or H x W), got {tuple(prediction.shape)} and {tuple(label.shape)}."
        )
    for name, tensor in (("prediction", prediction), ("label", label)):
        if tensor.is_floating_point() or tensor.is_complex():
            raise TypeError(
                f"case_metrics.py: {name} must hold integer class indices, got dtype "
                f"{tensor.dtype}."
            )
    sp = _check_spacing(spacing, prediction.ndim)
    names = _check_metric_names(metric_names, "case_metrics.py compute_case_metrics")

    pred = prediction.detach().to("cpu", torch.long)
    lab = label.detach().to("cpu", torch.long)
    for name, tensor in (("prediction", pred), ("label", lab)):
        if tensor.numel() == 0:
            raise ValueError(
                f"case_metrics.py: {name} is an empty volume of shape {tuple(tensor.shape)}."
            )
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"case_metrics.py: {name} values must lie in [0, {num_classes}), found range "
                f"[{low}, {high}]."
            )

    # One-hot of the foreground classes: (C - 1) x D x H x W booleans.
    classes = torch.arange(1, num_classes).view(-1, *([1] * pred.ndim))
    pred_oh = pred.unsqueeze(0) == classes
    lab_oh = lab.unsqueeze(0) == classes
    pred_any = pred_oh.flatten(1).any(1)
    lab_any = lab_oh.flatten(1).any(1)

    unit = sp if sp is not None else (1.0,) * pred.ndim
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, unit, strict=True)))

    rows = {name: torch.empty(num_classes - 1, dtype=torch.float64) for name in names}
    neither = ~pred_any & ~lab_any
    one_only = pred_any ^ lab_any
    both_empty_value = {"dice": 1.0, "hd95": 0.0, "asd": 0.0, "nsd": 1.0}
    one_empty_value = {"dice": 0.0, "hd95": diagonal, "asd": diagonal, "nsd": 0.0}
    for name, row in rows.items():
        row[neither] = both_empty_value[name]
        row[one_only] = one_empty_value[name]

    both = (pred_any & lab_any).nonzero().squeeze(1)
    if both.numel() > 0:
        # MONAI is imported here, at evaluation, so training needs no MONAI (GPU images).
        from monai.metrics import compute_dice

        zero_nsd = zero_below is not None and "nsd" in rows
        dice = None
        if "dice" in rows or zero_nsd:
            # MONAI wants one-hot B x C x spatial; all classes present in both go in one call.
            dice = compute_dice(
                pred_oh[both].unsqueeze(0).to(torch.float32),
                lab_oh[both].unsqueeze(0).to(torch.float32),
                include_background=True,
                ignore_empty=False,
            )[0].to(torch.float64)
            if "dice" in rows:
                rows["dice"][both] = dice
        if any(name != "dice" for name in rows):
            for c in both.tolist():
                values = _surface_metrics(pred_oh[c], lab_oh[c], sp, tolerances[c], c + 1)
                for name, row in rows.items():
                    if name != "dice":
                        row[c] = values[name]
        if zero_nsd and dice is not None:
            # The published rule: NSD 0 where Dice < threshold (classes empty in prediction or
            # label already score NSD 0 with Dice 0, or NSD 1 with Dice 1).
            low = both[dice < zero_below]
            rows["nsd"][low] = 0.0
    table = torch.stack([rows[name] for name in names])
    return table
