"""Several evaluation loaders: SegmentationMetrics keyed by (dataloader_idx, case_index)."""

from __future__ import annotations

import pytest
import torch

from advmim_lightning.evaluation.loaders import log_values_by_loader, logged_names
from advmim_lightning.evaluation.metrics import SegmentationMetrics


def cube(z0: int) -> torch.Tensor:
    volume = torch.zeros(8, 16, 16, dtype=torch.long)
    volume[z0 : z0 + 4, 4:12, 4:12] = 1
    return volume


PERFECT = (cube(2), cube(2))  # Dice 1
SHIFTED = (cube(4), cube(2))  # Dice 0.5


def two_loader_metric(**kwargs: object) -> SegmentationMetrics:
    """Loader 0: two perfect cases; loader 1: two shifted cases; both use case indices 0, 1."""
    metric = SegmentationMetrics(2, ["lv"], metric_names=("dice",), **kwargs)
    for index in (0, 1):
        metric.update(*PERFECT, case_index=index, dataloader_idx=0)
    for index in (0, 1):
        metric.update(*SHIFTED, case_index=index, dataloader_idx=1)
    return metric


def test_second_loader_with_overlapping_case_indices_is_kept():
    metric = two_loader_metric()
    by_loader = metric.compute_by_loader()
    assert list(by_loader) == [0, 1]
    assert by_loader[0]["dice_mean"].item() == pytest.approx(1.0)
    assert by_loader[1]["dice_mean"].item() == pytest.approx(0.5)  # was dropped as a repeat
    assert metric.compute()["dice_mean"].item() == pytest.approx(0.75)  # all 4 cases pooled
    indices, values = metric.per_case(dataloader_idx=1)
    assert indices.tolist() == [0, 1]
    assert values[:, 0, 0].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=r"loaders \[0, 1\] were scored .* pass dataloader_idx"):
        metric.per_case()
    with pytest.raises(RuntimeError, match=r"no case of dataloader_idx 2 .* \[0, 1\]"):
        metric.per_case(dataloader_idx=2)


def test_single_loader_results_are_unchanged():
    metric = SegmentationMetrics(2, metric_names=("dice",))
    metric.update(*PERFECT, case_index=1)
    metric.update(*SHIFTED, case_index=0)
    metric.update(*PERFECT, case_index=0)  # padded repeat: first entry kept
    assert metric.compute()["dice_mean"].item() == pytest.approx(0.75)
    assert metric.compute_by_loader()[0]["dice_mean"].item() == pytest.approx(0.75)
    assert metric.per_case()[0].tolist() == [0, 1]


def test_padded_repeats_are_dropped_per_loader_under_ddp():
    # Rank 1 holds loader 1's case 1 and a padded repeat of loader 1's case 0 (a perfect one
    # here, to show the first entry is kept).
    other = SegmentationMetrics(2, metric_names=("dice",))
    other.update(*SHIFTED, case_index=1, dataloader_idx=1)
    other.update(*PERFECT, case_index=0, dataloader_idx=1)
    states = {torch.int64: torch.cat(other.case_keys), torch.float64: torch.cat(other.values)}

    def fake_gather(tensor, group=None):
        return [tensor, states[tensor.dtype]]

    metric = SegmentationMetrics(
        2,
        metric_names=("dice",),
        dist_sync_fn=fake_gather,
        distributed_available_fn=lambda: True,
    )
    metric.update(*PERFECT, case_index=0, dataloader_idx=0)
    metric.update(*SHIFTED, case_index=0, dataloader_idx=1)
    by_loader = metric.compute_by_loader()
    assert by_loader[0]["dice_mean"].item() == pytest.approx(1.0)
    assert by_loader[1]["dice_mean"].item() == pytest.approx(0.5)  # cases 0 and 1, shifted
    assert metric.per_case(1)[0].tolist() == [0, 1]
    assert len(metric.case_keys) == 2  # local states restored


def test_update_refuses_batched_indices_and_bad_loader():
    metric = SegmentationMetrics(2)
    with pytest.raises(ValueError, match=r"case_index must be one integer .* shape \(2,\)"):
        metric.update(*PERFECT, case_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"dataloader_idx must be an int >= 0 .* got -1"):
        metric.update(*PERFECT, case_index=0, dataloader_idx=-1)


def test_logged_names():
    values = {"dice_mean": torch.tensor(0.5), "dice_lv": torch.tensor(0.4)}
    assert set(logged_names(values, "val", 0, 1)) == {"val/dice_mean", "val/dice_lv"}
    assert set(logged_names(values, "val", 1, 2)) == {
        "val/dice_mean/dataloader_idx_1",
        "val/dice_lv/dataloader_idx_1",
    }
    assert set(logged_names(values, "val", 0, 2)) == {
        "val/dice_mean/dataloader_idx_0",
        "val/dice_lv/dataloader_idx_0",
        "val/dice_mean",
        "val/dice_lv",
    }
    assert set(logged_names(values, "test", 0, 2, primary=None)) == {
        "test/dice_mean/dataloader_idx_0",
        "test/dice_lv/dataloader_idx_0",
    }
    assert set(logged_names(values, "val", 1, 2, loader_names=["acdc", "mnms"])) == {
        "val/mnms/dice_mean",
        "val/mnms/dice_lv",
    }
    with pytest.raises(ValueError, match=r"dataloader_idx must lie in \[0, 2\) .* got 2"):
        logged_names(values, "val", 2, 2)
    with pytest.raises(ValueError, match="2 unique, non-empty names"):
        logged_names(values, "val", 0, 2, loader_names=["a", "a"])


def test_log_values_by_loader():
    logged = log_values_by_loader(two_loader_metric(), "val", num_dataloaders=2)
    assert logged["val/dice_mean/dataloader_idx_0"].item() == pytest.approx(1.0)
    assert logged["val/dice_mean/dataloader_idx_1"].item() == pytest.approx(0.5)
    assert logged["val/dice_mean"].item() == pytest.approx(1.0)  # the primary loader
    with pytest.raises(ValueError, match=r"dataloader_idx must lie in \[0, 1\)"):
        log_values_by_loader(two_loader_metric(), "val", num_dataloaders=1)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wiring_with_two_lightning_validation_loaders(tmp_path):
    """The module-side wiring the report describes, in a tiny LightningModule."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.val_metrics = SegmentationMetrics(2, ["lv"], metric_names=("dice",))

        def validation_step(self, item, batch_idx, dataloader_idx=0):
            self.val_metrics.update(
                item["prediction"], item["label"], item["case_index"], None, dataloader_idx
            )

        def on_validation_epoch_end(self):
            values = log_values_by_loader(
                self.val_metrics, "val", len(self.trainer.num_val_batches)
            )
            self.val_metrics.reset()
            self.log_dict(values, add_dataloader_idx=False)

    def items(prediction_label):
        prediction, label = prediction_label
        return [{"prediction": prediction, "label": label, "case_index": i} for i in (0, 1)]

    loaders = [
        DataLoader(items(PERFECT), batch_size=None),
        DataLoader(items(SHIFTED), batch_size=None),
    ]
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.validate(Module(), dataloaders=loaders, verbose=False)
    metrics = trainer.callback_metrics
    assert metrics["val/dice_mean/dataloader_idx_0"].item() == pytest.approx(1.0)
    assert metrics["val/dice_mean/dataloader_idx_1"].item() == pytest.approx(0.5)
    assert metrics["val/dice_mean"].item() == pytest.approx(1.0)
