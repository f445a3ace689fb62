"""3D evaluation metrics: per-class Dice, HD95, average surface distance and NSD.

:func:`compute_case_metrics` scores one whole volume; :class:`SegmentationMetrics` accumulates
cases (gathered across processes under DDP, de-duplicated by ``(dataloader_idx, case_index)``)
and reports means, pooled or per evaluation loader; :func:`logged_names` names a loader's
values as Lightning does (``val/dice_mean/dataloader_idx_1``).

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

:meth:`SegmentationMetrics.compute` and :meth:`SegmentationMetrics.per_case` raise a
``RuntimeError`` when no case has been scored (a mean over no volumes has no meaning).

These functions run at evaluation time and synchronise with the host (volumes are moved to the
CPU, where MONAI uses a KD-tree for surface distances).

The file is longer than about 400 lines because it is one concern: the definitions above (about
60 lines), the checks of the options, the per-case scoring and the metric that accumulates it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["METRIC_NAMES", "SegmentationMetrics", "compute_case_metrics"]

METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "asd", "nsd")
"""Row order of the tables returned by :func:`compute_case_metrics`."""


def _check_spacing(spacing: Sequence[float] | Tensor | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"metrics.py: spacing must be {ndim} positive finite numbers in the volume's axis "
            f"order, got {spacing!r}."
        ) from error
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"metrics.py: spacing must be {ndim} positive finite numbers in the volume's axis "
            f"order, got {values}."
        )
    return values


def _check_nsd_options(
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
        where: the caller, for the messages.

    Returns:
        The tolerance of each foreground class (length ``num_classes - 1``) and the threshold.

    Raises:
        ValueError: on a tolerance that is not finite and >= 0, a sequence of the wrong length,
            or a threshold outside ``[0, 1]``.
    """
    count = num_classes - 1
    if isinstance(nsd_tolerance, (str, bytes)):
        raise ValueError(
            f"metrics.py {where}: nsd_tolerance must be a finite number >= 0 or {count} such "
            f"numbers (one per foreground class), got {nsd_tolerance!r}."
        )
    if hasattr(nsd_tolerance, "tolist"):  # a tensor or NumPy array (or scalar)
        nsd_tolerance = nsd_tolerance.tolist()
    per_class = isinstance(nsd_tolerance, Sequence)
    if per_class:
        if len(nsd_tolerance) != count:
            raise ValueError(
                f"metrics.py {where}: nsd_tolerance must give one value per foreground class "
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
                f"metrics.py {where}: nsd_tolerance must be a finite number >= 0, got "
                f"{value!r}{which}."
            ) from error
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(
                f"metrics.py {where}: nsd_tolerance must be a finite number >= 0, got "
                f"{number}{which}."
            )
        tolerances.append(number)
    threshold = nsd_zero_below_dice
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"metrics.py {where}: nsd_zero_below_dice must be None or a number in [0, 1], "
                f"got {nsd_zero_below_dice!r}."
            ) from error
        if not (0.0 <= threshold <= 1.0):
            raise ValueError(
                f"metrics.py {where}: nsd_zero_below_dice must be None or a number in [0, 1] "
                f"(the published evaluation uses 0.2), got {threshold}."
            )
    return tuple(tolerances), threshold


def _check_metric_names(metric_names: Sequence[str], where: str) -> tuple[str, ...]:
    names = tuple(metric_names)
    unknown = [n for n in names if n not in METRIC_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"metrics.py {where}: metric_names must be a non-empty subset of {METRIC_NAMES} "
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
        raise ValueError(f"metrics.py: num_classes must be >= 2, got {num_classes}.")
    tolerances, zero_below = _check_nsd_options(
        nsd_tolerance, nsd_zero_below_dice, num_classes, "compute_case_metrics"
    )
    if prediction.shape != label.shape or prediction.ndim not in (2, 3):
        raise ValueError(
            "metrics.py: prediction and label must be volumes of equal shape D x H x W (or H x W), "
            f"got {tuple(prediction.shape)} and {tuple(label.shape)}."
        )
    for name, tensor in (("prediction", prediction), ("label", label)):
        if tensor.is_floating_point() or tensor.is_complex():
            raise TypeError(
                f"metrics.py: {name} must hold integer class indices, got dtype {tensor.dtype}."
            )
    sp = _check_spacing(spacing, prediction.ndim)
    names = _check_metric_names(metric_names, "compute_case_metrics")

    pred = prediction.detach().to("cpu", torch.long)
    lab = label.detach().to("cpu", torch.long)
    for name, tensor in (("prediction", pred), ("label", lab)):
        if tensor.numel() == 0:
            raise ValueError(
                f"metrics.py: {name} is an empty volume of shape {tuple(tensor.shape)}."
            )
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"metrics.py: {name} values must lie in [0, {num_classes}), found range "
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


class SegmentationMetrics(Metric):
    """Per-case Dice / HD95 / ASD / NSD, accumulated over volumes and gathered under DDP.

    Each :meth:`update` scores one whole volume with :func:`compute_case_metrics` and stores its
    key ``(dataloader_idx, case_index)`` and 4 x (C - 1) table in list states reduced by
    concatenation, so under DDP every process sees all cases after synchronisation. Padded
    distributed samplers repeat volumes; :meth:`compute` and :meth:`per_case` keep one entry per
    key (the first occurrence). Several evaluation loaders share one metric: their case indices
    may overlap (each starts at 0) and all are kept; :meth:`compute_by_loader` gives each
    loader's means and :func:`advmim_lightning.evaluation.loaders.logged_names` the names to
    log them under.

    Under DDP every process must call :meth:`update` at least once before :meth:`compute`
    (Lightning's padded ``DistributedSampler`` guarantees this whenever there is one case).

    Args:
        num_classes: number of classes including background.
        class_names: names of the foreground classes 1 .. C-1 used in the result keys
            (``dice_<name>``); default ``class1`` .. ``class<C-1>``.
        nsd_tolerance: NSD tolerance in mm (voxels when a case has no spacing): one number for
            every class, or one per foreground class 1 .. C-1 (published ACDC: ``(5, 3, 3)``).
        metric_names: the metrics to compute, a subset of :data:`METRIC_NAMES` (default all);
            e.g. ``("dice",)`` for a cheap Dice-only tracker. Tables and keys follow this order.
        nsd_zero_below_dice: ``None`` (default, NSD as measured) or a Dice threshold in
            ``[0, 1]`` below which a class scores NSD 0 (published evaluation: 0.2).
        **kwargs: passed to :class:`torchmetrics.Metric` (``dist_sync_fn``, ...).

    Raises:
        ValueError: on ``num_classes < 2``, a wrong number of class names, empty or duplicate
            names, a negative tolerance, a tolerance sequence of the wrong length, a Dice
            threshold outside ``[0, 1]`` or unknown metric names.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    case_keys: list[Tensor]
    values: list[Tensor]

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        nsd_tolerance: float | Sequence[float] = 1.0,
        metric_names: Sequence[str] = METRIC_NAMES,
        nsd_zero_below_dice: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"metrics.py SegmentationMetrics: num_classes must be an int >= 2, got "
                f"{num_classes!r}."
            )
        if class_names is None:
            names = tuple(f"class{c}" for c in range(1, num_classes))
        else:
            names = tuple(str(n) for n in class_names)
            if len(names) != num_classes - 1:
                raise ValueError(
                    "metrics.py SegmentationMetrics: class_names must name the "
                    f"{num_classes - 1} foreground classes 1..{num_classes - 1}, got "
                    f"{len(names)} names {names}."
                )
            if any(not n for n in names) or len(set(names)) != len(names):
                raise ValueError(
                    "metrics.py SegmentationMetrics: class_names must be non-empty and unique, "
                    f"got {names}."
                )
        tolerances, zero_below = _check_nsd_options(
            nsd_tolerance, nsd_zero_below_dice, num_classes, "SegmentationMetrics"
        )
        self.num_classes = num_classes
        self.class_names = names
        #: The NSD tolerance of each foreground class 1 .. C-1.
        self.nsd_tolerances: tuple[float, ...] = tolerances
        #: One float when every class has the same tolerance, else the per-class tuple.
        self.nsd_tolerance: float | tuple[float, ...] = (
            tolerances if len(set(tolerances)) > 1 else tolerances[0]
        )
        self.nsd_zero_below_dice = zero_below
        self.metric_names = _check_metric_names(metric_names, "SegmentationMetrics")
        # One 1 x 2 int64 (dataloader_idx, case_index) per update.
        self.add_state("case_keys", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(
        self,
        prediction: Tensor,
        label: Tensor,
        case_index: int | Tensor,
        spacing: Sequence[float] | Tensor | None = None,
        dataloader_idx: int = 0,
    ) -> None:
        """Score one volume and store its table.

        Args:
            prediction: predicted class indices, shape D x H x W.
            label: ground-truth class indices, shape D x H x W.
            case_index: the volume's index in the evaluation dataset (int or 0-d tensor); used
                to drop repeats of padded distributed samplers.
            spacing: voxel size per axis (same order), or ``None`` for voxels.
            dataloader_idx: the evaluation loader the volume came from (Lightning's
                ``dataloader_idx``); volumes are keyed by ``(dataloader_idx, case_index)``, so
                loaders whose case indices overlap (each starts at 0) are all kept.

        Raises:
            ValueError: on a ``case_index`` that is not one integer, or a negative
                ``dataloader_idx``.
        """
        if isinstance(case_index, Tensor) and case_index.numel() != 1:
            raise ValueError(
                "metrics.py SegmentationMetrics.update: case_index must be one integer (an int "
                f"or a 0-d tensor), got a tensor of shape {tuple(case_index.shape)}."
            )
        if (
            isinstance(dataloader_idx, bool)
            or not isinstance(dataloader_idx, int)
            or (dataloader_idx < 0)
        ):
            raise ValueError(
                "metrics.py SegmentationMetrics.update: dataloader_idx must be an int >= 0 "
                f"(Lightning's dataloader_idx), got {dataloader_idx!r}."
            )
        table = compute_case_metrics(
            prediction,
            label,
            self.num_classes,
            spacing=spacing,
            nsd_tolerance=self.nsd_tolerances,
            metric_names=self.metric_names,
            nsd_zero_below_dice=self.nsd_zero_below_dice,
        )
        key = [[dataloader_idx, int(case_index)]]
        self.case_keys.append(torch.tensor(key, dtype=torch.int64, device=self.device))
        self.values.append(table.unsqueeze(0).to(self.device))

    def _deduplicated(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(dataloader indices, case indices, values)``, one entry per key, sorted by key."""
        if isinstance(self.values, list) and len(self.values) == 0:
            raise RuntimeError(
                "metrics.py SegmentationMetrics: no case was scored; call update() with at "
                "least one volume before compute() or per_case()."
            )
        keys = dim_zero_cat(self.case_keys).to(torch.int64).reshape(-1, 2)
        values = dim_zero_cat(self.values).reshape(-1, len(self.metric_names), self.num_classes - 1)
        # Stable sorts (case, then loader) keep the first occurrence of each key first in its run.
        order = torch.sort(keys[:, 1], stable=True).indices
        order = order[torch.sort(keys[order, 0], stable=True).indices]
        keys = keys[order]
        first = torch.ones(keys.shape[0], dtype=torch.bool)
        first[1:] = (keys[1:] != keys[:-1]).any(dim=1)
        return keys[first, 0], keys[first, 1], values[order[first]]

    def _synchronised(self) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_deduplicated` over the states of every process (one synchronisation)."""
        from advmim_lightning.run.lightning_private import metric_sync_flags

        should_sync, should_unsync = metric_sync_flags(self)
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=should_sync, should_unsync=should_unsync
        ):
            return tuple(t.clone() for t in self._deduplicated())  # type: ignore[return-value]

    def per_case(self, dataloader_idx: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-case tables after de-duplication (synchronised across processes under DDP).

        Args:
            dataloader_idx: the loader whose cases to return; ``None`` (default) when every
                case came from one loader (the usual single evaluation loader).

        Returns:
            ``(case_indices, values)``: int64 indices sorted ascending, shape N, and float64
            values of shape N x 4 x (C - 1) (rows as :data:`METRIC_NAMES`; in general
            N x len(metric_names) x (C - 1)).

        Raises:
            RuntimeError: if no case was scored (of that loader).
            ValueError: if ``dataloader_idx`` is None and cases of several loaders were scored
                (their case indices overlap: choose one).
        """
        loaders, indices, values = self._synchronised()
        seen = sorted(set(loaders.tolist()))
        if dataloader_idx is None:
            if len(seen) > 1:
                raise ValueError(
                    "metrics.py SegmentationMetrics.per_case: cases of the evaluation loaders "
                    f"{seen} were scored and their case indices overlap; pass dataloader_idx "
                    "(one of them) to get one loader's table."
                )
            return indices, values
        chosen = loaders == dataloader_idx
        if not bool(chosen.any()):
            raise RuntimeError(
                f"metrics.py SegmentationMetrics.per_case: no case of dataloader_idx "
                f"{dataloader_idx} was scored (loaders scored: {seen})."
            )
        return indices[chosen], values[chosen]

    def _means(self, values: Tensor) -> dict[str, Tensor]:
        per_class = values.mean(dim=0)  # len(metric_names) x (C - 1)
        result: dict[str, Tensor] = {}
        for row, metric in enumerate(self.metric_names):
            result[f"{metric}_mean"] = per_class[row].mean()
            for column, name in enumerate(self.class_names):
                result[f"{metric}_{name}"] = per_class[row, column]
        return result

    def compute(self) -> dict[str, Tensor]:
        """Means over cases (each case counted once), then over classes.

        With several evaluation loaders the cases of all loaders are pooled (each
        ``(dataloader_idx, case_index)`` once); :meth:`compute_by_loader` gives each loader's.

        Returns:
            Scalar float64 tensors: ``<metric>_mean`` for each metric in ``metric_names``
            (default :data:`METRIC_NAMES`) and ``<metric>_<class name>`` for each foreground
            class.

        Raises:
            RuntimeError: if no case was scored (an empty state has no meaningful mean).
        """
        _, _, values = self._deduplicated()
        return self._means(values)

    def compute_by_loader(self) -> dict[int, dict[str, Tensor]]:
        """:meth:`compute`'s means for each evaluation loader (one synchronisation under DDP).

        Returns:
            ``{dataloader_idx: {"dice_mean": ..., "dice_<class>": ..., ...}}`` for every loader
            with a scored case, in ascending order; a single loader gives ``{0: compute()}``.

        Raises:
            RuntimeError: if no case was scored.
        """
        loaders, _, values = self._synchronised()
        return {
            int(loader): self._means(values[loaders == loader])
            for loader in sorted(set(loaders.tolist()))
        }
