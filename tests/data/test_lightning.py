"""Through a real Trainer: a run resumed mid-epoch from a checkpoint sees the same batches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from advmim_lightning.data import PhantomSettings


class Recorder(pl.LightningModule):
    """Records a fingerprint of every training batch it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"labeled", "unlabeled"}  # the iteration entry was removed
        self.seen.append(
            (
                batch["labeled"]["image"].sum().item(),
                batch["labeled"]["label"].sum().item(),
                batch["unlabeled"]["image"].sum().item(),
                tuple(batch["labeled"]["case_id"]),
            )
        )
        return (self.weight * batch["labeled"]["image"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(make_dm, tmp: Path, max_steps: int, ckpt_path: str | None = None, callbacks=()) -> Recorder:
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
    )
    trainer.fit(model, datamodule=make_dm(iterations_per_epoch=3), ckpt_path=ckpt_path)
    return model


def test_mid_epoch_resume_sees_the_same_batches(tmp_path: Path, make_phantom_dm) -> None:
    full = fit(make_phantom_dm, tmp_path / "a", max_steps=7).seen
    assert len(full) == 7
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    fit(make_phantom_dm, tmp_path / "b", max_steps=4, callbacks=[checkpoint])
    path = tmp_path / "ckpt" / "step=4.ckpt"  # after 4 batches: epoch 1, one batch in
    state = torch.load(path, weights_only=True)
    assert state["AdvMIMDataModule"]["next_iteration"] == 4
    # The loader is resumable for Lightning too (no "dataloader is not resumable" warning).
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{}]
    resumed = fit(make_phantom_dm, tmp_path / "c", max_steps=7, ckpt_path=str(path)).seen
    assert resumed == full[4:]


class Evaluator(pl.LightningModule):
    """Receives unwrapped evaluation items and records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Identity()
        self.items: list[tuple] = []

    def _record(self, item) -> None:
        assert item["image"].ndim == 4 and isinstance(item["case_id"], str)
        self.items.append((item["case_id"], item["case_index"], "label" in item))

    def validation_step(self, item, batch_idx):
        self._record(item)

    def test_step(self, item, batch_idx):
        self._record(item)

    def predict_step(self, item, batch_idx):
        self._record(item)
        return item["image"][0].argmax(0)


def test_evaluation_through_the_trainer(tmp_path: Path, make_phantom_dm) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    dm = make_phantom_dm(phantom=PhantomSettings(cases=8, slices=3, size=32))
    for run in (trainer.validate, trainer.test):
        model = Evaluator()
        run(model, datamodule=dm)
        split = dm.case_split.val if run == trainer.validate else dm.case_split.test
        assert model.items == [(case, i, True) for i, case in enumerate(split)]
    model = Evaluator()
    predictions = trainer.predict(model, datamodule=dm)
    assert [c for c, _, _ in model.items] == dm.case_split.test
    assert predictions[0].shape == (32, 32)
