"""``Evaluator``: the validation and test metrics of a run, per evaluation loader (no Lightning).

The LightningModule hands each predicted case to :meth:`Evaluator.validation_case` or
:meth:`Evaluator.test_case` and, at the end of a stage, logs :meth:`Evaluator.validation_values`
or :meth:`Evaluator.test_values` and writes :meth:`Evaluator.write_test_tables`. Volumes are
keyed by ``(dataloader_idx, case_index)``, so several loaders never mix their cases
(``docs/evaluation.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from advmim_lightning.evaluation import inference, loaders
from advmim_lightning.evaluation.items import check_evaluation_item
from advmim_lightning.evaluation.metrics import SegmentationMetrics

__all__ = ["Evaluator"]


class Evaluator(nn.Module):
    """The metrics of validation (the evaluated network's, and Dice per segmenter) and test.

    Args:
        num_classes: Classes including background.
        in_channels: The networks' input channels (items are checked against it).
        class_names: All class names incl. background.
        networks: The segmenters' names (``val/dice_mean_<name>``).
        nsd_tolerance: NSD tolerance, one value or one per foreground class.
        nsd_zero_below_dice: NSD is 0 where Dice is below it (published: 0.2), or None.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        class_names: Sequence[str],
        networks: Sequence[str],
        nsd_tolerance: float | Sequence[float] = 1.0,
        nsd_zero_below_dice: float | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.class_names = list(class_names)
        names, nsd = (
            self.class_names[1:],
            {
                "nsd_tolerance": nsd_tolerance,
                "nsd_zero_below_dice": nsd_zero_below_dice,
            },
        )
        self.val_metrics = SegmentationMetrics(num_classes, names, **nsd)
        self.test_metrics = SegmentationMetrics(num_classes, names, **nsd)
        self.val_dice_per_network = nn.ModuleDict(
            {n: SegmentationMetrics(num_classes, names, metric_names=("dice",)) for n in networks}
        )
        self._test_case_ids: dict[tuple[int, int], str] = {}

    @classmethod
    def for_settings(cls, settings: Any, networks: Sequence[str]) -> Evaluator:
        """The evaluator of a run's settings (``MethodSettings``: classes, channels, NSD)."""
        return cls(
            settings.num_classes,
            settings.in_channels,
            settings.class_names,
            networks,
            nsd_tolerance=settings.nsd_tolerance,
            nsd_zero_below_dice=settings.nsd_zero_below_dice,
        )

    def check(
        self, item: Mapping[str, Any], where: str, batch_idx: int
    ) -> tuple[int | None, tuple[float, ...] | None]:
        """Refuse an item that cannot be scored (before anything is predicted); its case
        index and spacing (:func:`~advmim_lightning.evaluation.items.check_evaluation_item`)."""
        return check_evaluation_item(item, self.num_classes, self.in_channels, where, batch_idx)

    def validation_case(
        self,
        predictions: Mapping[str, Tensor],
        item: Mapping[str, Any],
        checked: tuple[Any, Any],
        evaluated: str,
        dataloader_idx: int = 0,
    ) -> None:
        """Score one validation case (``predictions`` by network; ``evaluated`` is reported;
        ``checked`` is :meth:`check`'s result)."""
        index, spacing = checked
        label = item["label"]
        self.val_metrics.update(predictions[evaluated], label, index, spacing, dataloader_idx)
        for name, metric in self.val_dice_per_network.items():
            metric.update(predictions[name], label, index, spacing, dataloader_idx)

    def validation_values(self, num_dataloaders: int) -> dict[str, Tensor]:
        """``val/...`` values of every loader (``val/dice_mean`` is the first loader's), and
        ``val/dice_mean_<network>``; the metrics are reset."""
        values = loaders.log_values_by_loader(self.val_metrics, "val", num_dataloaders)
        for name, metric in self.val_dice_per_network.items():
            for index, by_loader in metric.compute_by_loader().items():
                mean = {f"dice_mean_{name}": by_loader["dice_mean"]}
                values.update(loaders.logged_names(mean, "val", index, num_dataloaders))
            metric.reset()
        self.val_metrics.reset()
        return values

    def test_case(
        self,
        predictions: Mapping[str, Tensor],
        item: Mapping[str, Any],
        checked: tuple[Any, Any],
        evaluated: str,
        dataloader_idx: int = 0,
    ) -> None:
        """Score one test case and remember its id for the per-case table."""
        index, spacing = checked
        self._test_case_ids[(dataloader_idx, int(index))] = str(item["case_id"])
        self.test_metrics.update(
            predictions[evaluated], item["label"], index, spacing, dataloader_idx
        )

    def test_values(self, num_dataloaders: int) -> dict[str, Tensor]:
        """``test/...`` values of every loader (not reset: the tables follow)."""
        return loaders.log_values_by_loader(self.test_metrics, "test", num_dataloaders)

    def write_test_tables(
        self,
        out_dir: Path,
        num_dataloaders: int,
        dataset_case_ids: Mapping[int, str],
        write: bool = True,
    ) -> list[Path]:
        """Write ``test_metrics.csv`` (``test_metrics_<i>.csv`` per loader where several) and
        reset the test metrics. Under DDP every rank calls it (the tables are gathered) and
        one writes.

        Args:
            out_dir: The run's log folder.
            num_dataloaders: How many test loaders the stage had.
            dataset_case_ids: The first loader's case ids by index, where the data module
                offers them (ids seen in the items take precedence).
            write: Whether this process writes the files (rank 0).
        """
        summaries = self.test_metrics.compute_by_loader()
        paths = []
        for loader, summary in summaries.items():
            indices, table = self.test_metrics.per_case(dataloader_idx=loader)
            ids = dict(dataset_case_ids) if loader == 0 else {}
            ids.update({i: c for (d, i), c in self._test_case_ids.items() if d == loader and c})
            name = "test_metrics.csv" if num_dataloaders == 1 else f"test_metrics_{loader}.csv"
            if not write:
                continue
            paths.append(
                inference.write_test_csv(
                    out_dir / name, indices, table, summary, self.class_names[1:], ids
                )
            )
        self.test_metrics.reset()
        self._test_case_ids = {}
        return paths
