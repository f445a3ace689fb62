"""Several evaluation loaders: the names each loader's metrics are logged under (no Lightning).

A stage (validation, test) may have several loaders, e.g. ``val_dataloader`` returning
``[in_domain, out_of_domain]``. Their case indices overlap (each dataset starts at 0), so
:class:`~advmim_lightning.evaluation.metrics.SegmentationMetrics` keys volumes by
``(dataloader_idx, case_index)`` and :meth:`~advmim_lightning.evaluation.metrics.
SegmentationMetrics.compute_by_loader` gives each loader's means. :func:`logged_names` names
them as Lightning names values logged from a step with several loaders
(``val/dice_mean/dataloader_idx_1``), or by loader name (``val/<name>/dice_mean``);
:func:`log_values_by_loader` does both for a whole metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from advmim_lightning.evaluation.metrics import SegmentationMetrics

__all__ = ["log_values_by_loader", "logged_names"]


def logged_names(
    values: Mapping[str, Tensor],
    prefix: str,
    dataloader_idx: int,
    num_dataloaders: int,
    loader_names: Sequence[str] | None = None,
    primary: int | None = 0,
) -> dict[str, Tensor]:
    """The names one loader's metrics are logged under.

    One loader: ``<prefix>/<key>`` (``val/dice_mean``), as today. Several: Lightning's own
    naming, ``<prefix>/<key>/dataloader_idx_<i>`` (``val/dice_mean/dataloader_idx_1``), or
    ``<prefix>/<loader name>/<key>`` when ``loader_names`` are given. The ``primary`` loader is
    also logged under the plain names, so ``val/dice_mean`` (checkpoint monitor, progress bar)
    keeps meaning the first validation loader. Log the result with
    ``add_dataloader_idx=False``: Lightning refuses a name with ``/dataloader_idx_`` otherwise.

    Args:
        values: one loader's ``compute()`` result (``dice_mean``, ``dice_<class>``, ...).
        prefix: ``"val"`` or ``"test"``.
        dataloader_idx: the loader (0-based).
        num_dataloaders: how many evaluation loaders the stage has.
        loader_names: a name per loader (``num_dataloaders`` of them), or ``None``.
        primary: the loader also logged under the plain names; ``None`` for none.

    Returns:
        Name -> value.

    Raises:
        ValueError: on a ``dataloader_idx`` outside ``[0, num_dataloaders)`` or a wrong number
            of unique, non-empty loader names.
    """
    if num_dataloaders < 1 or not 0 <= dataloader_idx < num_dataloaders:
        raise ValueError(
            f"loaders.py logged_names: dataloader_idx must lie in [0, {num_dataloaders}) "
            f"(num_dataloaders={num_dataloaders}), got {dataloader_idx}."
        )
    if loader_names is not None:
        names = [str(n) for n in loader_names]
        if len(names) != num_dataloaders or len(set(names)) != len(names) or not all(names):
            raise ValueError(
                f"loaders.py logged_names: loader_names must be {num_dataloaders} unique, "
                f"non-empty names (one per loader), got {list(loader_names)}."
            )
    plain = {f"{prefix}/{key}": value for key, value in values.items()}
    if num_dataloaders == 1:
        return plain
    if loader_names is not None:
        named = {f"{prefix}/{names[dataloader_idx]}/{k}": v for k, v in values.items()}
    else:
        named = {f"{prefix}/{k}/dataloader_idx_{dataloader_idx}": v for k, v in values.items()}
    return {**named, **plain} if dataloader_idx == primary else named


def log_values_by_loader(
    metric: SegmentationMetrics,
    prefix: str,
    num_dataloaders: int,
    loader_names: Sequence[str] | None = None,
    primary: int | None = 0,
) -> dict[str, Tensor]:
    """Every loader's means of ``metric``, under the names of :func:`logged_names`.

    One synchronisation under DDP (:meth:`SegmentationMetrics.compute_by_loader`); the metric
    is not reset.

    Args:
        metric: The stage's metric, updated with each volume's ``dataloader_idx``.
        prefix: ``"val"`` or ``"test"``.
        num_dataloaders: How many loaders the stage has (with Lightning:
            ``len(trainer.num_val_batches)`` / ``len(trainer.num_test_batches)``).
        loader_names: A name per loader, or ``None`` for ``dataloader_idx_<i>`` suffixes.
        primary: The loader also logged under the plain names (``val/dice_mean``); ``None``
            for none.

    Returns:
        Name -> scalar tensor, for ``log_dict(..., add_dataloader_idx=False)``. A loader that
        scored no case (none of its volumes was seen) is absent.

    Raises:
        RuntimeError: If no case was scored.
        ValueError: If a case came from a loader outside ``[0, num_dataloaders)``.
    """
    logged: dict[str, Tensor] = {}
    for index, values in metric.compute_by_loader().items():
        logged.update(logged_names(values, prefix, index, num_dataloaders, loader_names, primary))
    return logged
