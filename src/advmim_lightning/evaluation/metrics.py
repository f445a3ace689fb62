"""3D evaluation metric: per-case Dice, HD95, ASD and NSD accumulated over volumes.

:class:`SegmentationMetrics` scores each whole volume with
:func:`~advmim_lightning.evaluation.case_metrics.compute_case_metrics` (the definitions and the
empty-mask rule are in :mod:`advmim_lightning.evaluation.case_metrics`), accumulates the cases
(gathered across processes under DDP, de-duplicated by ``(dataloader_idx, case_index)``) and
reports means, pooled or per evaluation loader; :func:`logged_names` names a loader's values as
Lightning does (``val/dice_mean/dataloader_idx_1``).

:meth:`SegmentationMetrics.compute` and :meth:`SegmentationMetrics.per_case` raise a
``RuntimeError`` when no case has been scored (a mean over no volumes has no meaning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from advmim_lightning.evaluation.case_metrics import (
    METRIC_NAMES,
    _check_metric_names,
    check_nsd_options,
    compute_case_metrics,
)

__all__ = ["SegmentationMetrics"]


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
        tolerances, zero_below = check_nsd_options(
            nsd_tolerance, nsd_zero_below_dice, num_classes, "metrics.py SegmentationMetrics"
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
        self.metric_names = _check_metric_names(metric_names, "metrics.py SegmentationMetrics")
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
