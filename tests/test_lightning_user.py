"""AdvMIMModule and AdvMIMDataModule inside someone else's Lightning project (no CLI).

Every test is written the way a Lightning user would: a plain ``lightning.Trainer``,
``trainer.fit(model, datamodule=dm)``, ModelCheckpoint, LearningRateMonitor, loggers; tiny
networks on a tiny phantom, a few iterations.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from advmim_lightning import AdvMIMDataModule, AdvMIMModule
from advmim_lightning.data import PhantomSettings
from advmim_lightning.method.schedules import poly_lr
from tiny import TINY_SIZE, full_state, tiny_batch, tiny_swin, tiny_unet

SIZE = (TINY_SIZE, TINY_SIZE)


def make_data(**kwargs) -> AdvMIMDataModule:
    """6 phantom cases (2 labeled, 2 unlabeled, 1 val, 1 test), 3 iterations per epoch."""
    settings = {
        "layout": "phantom",
        "phantom": PhantomSettings(cases=6, slices=3, size=TINY_SIZE),
        "image_size": SIZE,
        "labeled_cases": 2,
        "labeled_batch_size": 2,
        "unlabeled_batch_size": 2,
        "num_workers": 0,
        "iterations_per_epoch": 3,
    }
    return AdvMIMDataModule(**{**settings, **kwargs})


def make_model(max_iterations: int = 5, **kwargs) -> AdvMIMModule:
    torch.manual_seed(0)
    kwargs.setdefault("cnn", tiny_unet())
    kwargs.setdefault("transformer", tiny_swin())
    return AdvMIMModule(
        image_size=SIZE, mask_block_size=16, max_iterations=max_iterations, **kwargs
    )


def make_trainer(root: Path, **kwargs) -> pl.Trainer:
    """A quiet CPU trainer; ``kwargs`` override (validation off unless asked for)."""
    settings = {
        "accelerator": "cpu",
        "default_root_dir": root,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    settings.update(kwargs)
    if settings.get("callbacks") and any(
        isinstance(c, ModelCheckpoint) for c in settings["callbacks"]
    ):
        settings["enable_checkpointing"] = True
    return pl.Trainer(**settings)


class Batches(pl.Callback):
    """Records ``(model.iteration, fingerprint of the labeled images)`` of every batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((pl_module.iteration, float(batch["labeled"]["image"].sum())))


class Validations(pl.Callback):
    """Records the model's iteration at every validation (not the sanity check)."""

    def __init__(self) -> None:
        self.at: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.at.append(pl_module.iteration)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def fit_uninterrupted(root: Path, max_iterations: int = 5):
    batches, model = Batches(), make_model(max_iterations)
    trainer = make_trainer(root, callbacks=[batches])
    trainer.fit(model, datamodule=make_data())
    return batches.seen, full_state(model), model


# ---------------------------------------------------------------------------- 1. resuming
def test_a_checkpoint_saved_after_fit_returned_resumes_bitwise(tmp_path):
    full, full_weights, _ = fit_uninterrupted(tmp_path / "full")
    assert [it for it, _ in full] == [0, 1, 2, 3, 4]

    # The README's pattern: fit, then trainer.save_checkpoint, then fit(ckpt_path=...) later.
    first = make_trainer(tmp_path / "a", max_steps=2 * 4)  # 2 iterations: mid-epoch
    first.fit(make_model(), datamodule=make_data())
    first.save_checkpoint(tmp_path / "e.ckpt")

    batches, model = Batches(), make_model()
    make_trainer(tmp_path / "b", callbacks=[batches]).fit(
        model, datamodule=make_data(), ckpt_path=tmp_path / "e.ckpt"
    )
    assert batches.seen == full[2:]  # data iterations 2, 3, 4, not 3, 4, 5
    assert model.iteration == 5
    assert_same_state(full_state(model), full_weights)


def test_a_model_checkpoint_from_mid_run_resumes_bitwise(tmp_path):
    full, full_weights, _ = fit_uninterrupted(tmp_path / "full")
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}"
    )
    make_trainer(tmp_path / "a", max_steps=4 * 4, callbacks=[checkpoints]).fit(
        make_model(), datamodule=make_data()
    )
    batches, model = Batches(), make_model()
    make_trainer(tmp_path / "b", callbacks=[batches]).fit(  # epoch 1, one iteration in
        model, datamodule=make_data(), ckpt_path=tmp_path / "ckpt" / "step=16.ckpt"
    )
    assert batches.seen == full[4:]
    assert_same_state(full_state(model), full_weights)


def test_the_end_of_run_last_checkpoint_extended_to_more_iterations_reads_the_next_batches(
    tmp_path,
):
    full, _, _ = fit_uninterrupted(tmp_path / "full")
    # A run of 2 iterations that ends by itself (max_iterations, no max_steps), as the CLI's.
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    make_trainer(tmp_path / "a", callbacks=[checkpoints]).fit(
        make_model(max_iterations=2), datamodule=make_data()
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 2

    # The learning rate now decays to 0 at 5: weights differ from a 5-iteration run's, data not.
    batches = Batches()
    model = AdvMIMModule.load_from_checkpoint(
        last, cnn=tiny_unet(), transformer=tiny_swin(), max_iterations=5
    )
    make_trainer(tmp_path / "b", callbacks=[batches]).fit(
        model, datamodule=make_data(), ckpt_path=last
    )
    assert batches.seen == full[2:]
    assert model.iteration == 5


# ---------------------------------------------------------------------------- 2. run's end
def test_a_run_ending_mid_epoch_is_validated_and_its_last_checkpoint_holds_the_end(tmp_path):
    batches, validations = Batches(), Validations()
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/dice_mean",
        mode="max",
        save_top_k=-1,  # Lightning refreshes last.ckpt only when it saves a top-k one
        save_last=True,
        filename="{step}",
    )
    model = make_model(max_iterations=5)  # epochs of 3: the run ends one iteration into epoch 1
    trainer = make_trainer(
        tmp_path, limit_val_batches=1, callbacks=[batches, validations, checkpoints]
    )
    trainer.fit(model, datamodule=make_data())
    assert [it for it, _ in batches.seen] == [0, 1, 2, 3, 4]  # no sixth batch is read
    assert validations.at == [3, 5]
    assert (
        torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]["iteration"]
        == 5
    )
    assert "val/dice_mean" in trainer.callback_metrics
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "last.ckpt",
        "step=12.ckpt",
        "step=20.ckpt",
    ]


# ---------------------------------------------------------------------------- 3. hparams
def test_loggers_record_the_resolved_hyperparameters_and_the_networks(tmp_path):
    logger = CSVLogger(tmp_path, name="run", version=0)
    model = make_model(max_iterations=1)
    make_trainer(tmp_path, logger=logger).fit(model, datamodule=make_data())
    hparams = yaml.unsafe_load((tmp_path / "run" / "version_0" / "hparams.yaml").read_text())
    assert hparams["lr"] == 0.05 and hparams["grad_clip_norm"] == 5.0
    assert hparams["sup_weight"] == 1.0 and hparams["cross_teaching_weight"] == 0.1
    assert hparams["adversarial_weight"] == 0.001 and hparams["discriminator_weight"] == 0.1
    assert hparams["masked_sup_weight"] == 1.0 and hparams["masked_pseudo_weight"] == 1.0
    assert hparams["cnn"]["class_path"] == "advmim_lightning.networks.unet.UNet"
    assert hparams["transformer"]["init_args"]["embed_dim"] == 12
    assert hparams["labeled_batch_size"] == 2  # the data module's, merged in

    ctct = make_model(method="ctct").hparams_initial
    assert (ctct["lr"], ctct["sup_weight"], ctct["cross_teaching_rampup"]) == (0.01, 0.5, True)
    assert "adversarial_weight" not in ctct


# ---------------------------------------------------------------------------- 4. overfit
def test_overfit_batches_trains_on_the_first_batch_again_and_again(tmp_path):
    batches = Batches()
    model = make_model(max_iterations=10)
    trainer = make_trainer(tmp_path, overfit_batches=1, max_epochs=3, callbacks=[batches])
    trainer.fit(model, datamodule=make_data())
    assert [it for it, _ in batches.seen] == [0, 1, 2]
    first = make_data()
    first.setup("fit")
    iteration0 = next(iter(first.train_dataloader()))["labeled"]["image"].sum()
    assert {f for _, f in batches.seen} == {float(iteration0)}


# ---------------------------------------------------------------------------- 5. contract
class OneOutput(nn.Module):
    """Returns only the logits, even when given ``mask=``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_unet()

    def forward(self, x, mask=None):
        return self.net(x)


class WrongClasses(nn.Module):
    """Predicts 3 classes (no ``num_classes`` attribute that init could check)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x, mask=None):
        return (self.conv(x), self.conv(x)) if mask is not None else self.conv(x)


class HalfResolution(nn.Module):
    """Returns logits at half the input resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 2, stride=2)

    def forward(self, x, mask=None):
        return (self.conv(x), self.conv(x)) if mask is not None else self.conv(x)


@pytest.mark.parametrize(
    ("cnn", "error", "returned", "expected"),
    [
        (
            OneOutput,
            TypeError,
            "returned a tensor of shape (2, 4, 64, 64)",
            "expected a pair (logits, masked_logits) of tensors of shape (2, 4, 64, 64)",
        ),
        (
            WrongClasses,
            ValueError,
            "returned a tuple of 2 (a tensor of shape (2, 3, 64, 64), a tensor of shape "
            "(2, 3, 64, 64))",
            "of tensors of shape (2, 4, 64, 64) (B x num_classes=4",
        ),
        (
            HalfResolution,
            ValueError,
            "a tensor of shape (2, 4, 32, 32)",
            "of tensors of shape (2, 4, 64, 64)",
        ),
    ],
)
def test_a_broken_segmenter_contract_is_named_on_the_first_batch(
    tmp_path, cnn, error, returned, expected
):
    model = make_model(cnn=cnn())  # AdvMIM: the first call is on the 2 labeled images
    with pytest.raises(error) as caught:
        make_trainer(tmp_path).fit(model, datamodule=make_data())
    message = str(caught.value)
    assert f"The cnn network ({cnn.__name__}) breaks the segmenter contract" in message
    assert "x of shape (2, 1, 64, 64) and mask=" in message
    assert returned in message and expected in message
    assert model.iteration == 0


def test_a_network_breaking_the_contract_at_evaluation_is_named(tmp_path):
    class LogitsPair(nn.Module):  # returns the training pair even without a mask
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_unet()

        def forward(self, x, mask=None):
            out = self.net(x, mask=mask if mask is not None else torch.zeros_like(x[:, 0]) > 0)
            return out

    model = make_model(cnn=LogitsPair())
    with pytest.raises(TypeError, match=r"given x of shape \(\d+, 1, 64, 64\) it returned a tuple"):
        make_trainer(tmp_path, limit_val_batches=1).validate(
            model, datamodule=make_data(), verbose=False
        )


# ---------------------------------------------------------------------------- 6. finished
def test_fit_on_a_model_that_already_reached_max_iterations_says_so(tmp_path):
    model = make_model(max_iterations=2)
    make_trainer(tmp_path / "a").fit(model, datamodule=make_data())
    batches = Batches()
    with pytest.warns(UserWarning, match=r"already trained max_iterations=2 .* raise max_iter"):
        make_trainer(tmp_path / "b", callbacks=[batches]).fit(model, datamodule=make_data())
    assert batches.seen == [] and model.iteration == 2

    model.hparams.max_iterations = 3  # the advice: train longer
    make_trainer(tmp_path / "c", callbacks=[batches]).fit(model, datamodule=make_data())
    assert [it for it, _ in batches.seen] == [2] and model.iteration == 3


# ---------------------------------------------------------------------------- 7. lr monitor
def test_learning_rate_monitor_names_the_networks_and_logs_the_current_rate(tmp_path):
    logger = CSVLogger(tmp_path, name="run", version=0)
    model = make_model(max_iterations=4)
    trainer = make_trainer(
        tmp_path,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(model, datamodule=make_data())
    import csv

    with (tmp_path / "run" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    names = ("lr-transformer", "lr-cnn", "lr-disc_transformer", "lr-disc_cnn")
    assert set(names) <= set(rows[0]) and not any(k.startswith("lr-SGD") for k in rows[0])
    monitored = {int(r["step"]): r for r in rows if r["lr-cnn"]}
    logged = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    assert sorted(monitored) == [0, 1, 2, 3]
    for step, row in monitored.items():
        expected = poly_lr(0.05, step, 4, 0.9)  # iteration == step: one batch per step
        for name in names:
            assert float(row[name]) == pytest.approx(expected, rel=1e-6), (step, name)
        assert logged[step] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------- 8. smaller
def test_a_tuple_batch_is_refused_naming_the_expected_dict(tmp_path):
    class Tuples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            batch = tiny_batch(seed=i)
            return batch["labeled"]["image"], batch["labeled"]["label"]

    trainer = make_trainer(tmp_path, max_epochs=1)
    with pytest.raises(TypeError) as caught:
        trainer.fit(make_model(), train_dataloaders=DataLoader(Tuples(), batch_size=None))
    message = str(caught.value)
    assert "got a list of 2 entries" in message or "got a tuple of 2 entries" in message
    assert '{"labeled": {"image": B x C x H x W float, "label": B x H x W int64}' in message


def test_to_torchscript_traces_the_evaluated_network_and_refuses_scripting():
    model = make_model().eval()
    traced = model.to_torchscript(method="trace")
    x = torch.rand(2, 1, *SIZE)
    torch.testing.assert_close(traced(x), model(x))
    with pytest.raises(ValueError, match=r"to_torchscript\(method='script'\) is not supported"):
        model.to_torchscript()


def test_test_metrics_csv_goes_to_default_root_dir_without_a_logger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    trainer = make_trainer(root)
    trainer.test(make_model(), datamodule=make_data(), verbose=False)
    assert (root / "test_metrics.csv").is_file()
    assert not (tmp_path / "test_metrics.csv").exists()


def test_the_iteration_travels_in_the_state_dict():
    model = make_model()
    model.iteration = 7
    state = model.state_dict()
    assert state["iteration"].item() == 7
    other = make_model()
    other.load_state_dict(state)  # strict: the entry is taken back out
    assert other.iteration == 7
    del state["iteration"]  # older state dicts have none
    make_model().load_state_dict(state)


@pytest.mark.slow
def test_after_ddp_spawn_the_main_process_knows_the_iteration(tmp_path):
    model = make_model(max_iterations=2)
    trainer = make_trainer(tmp_path, strategy="ddp_spawn_find_unused_parameters_true", devices=1)
    trainer.fit(model, datamodule=make_data())
    assert model.iteration == 2
    trainer.save_checkpoint(tmp_path / "spawned.ckpt")
    assert torch.load(tmp_path / "spawned.ckpt", weights_only=True)["state_dict"]["iteration"] == 2


@pytest.mark.slow
def test_plain_ddp_spawn_is_refused_naming_the_spawn_variant(tmp_path):
    trainer = make_trainer(tmp_path, strategy="ddp_spawn", devices=1)
    with pytest.raises(Exception, match="strategy='ddp_spawn_find_unused_parameters_true'"):
        trainer.fit(make_model(max_iterations=1), datamodule=make_data())


class MyNet(nn.Module):
    """A network from outside the library."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_unet()

    def forward(self, x, mask=None):
        return self.net(x, mask=mask)


def test_reloading_a_custom_network_asks_for_the_instance_first(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(make_model(max_iterations=1, cnn=MyNet()), datamodule=make_data())
    trainer.save_checkpoint(tmp_path / "mine.ckpt")
    with pytest.raises(ValueError) as caught:
        AdvMIMModule.load_from_checkpoint(tmp_path / "mine.ckpt", transformer=tiny_swin())
    message = str(caught.value)
    assert "pass the instance" in message and "cnn=MyNet(...)" in message
    assert message.index("pass the instance") < message.index("ADVMIM_TRUSTED_CLASSES")
    loaded = AdvMIMModule.load_from_checkpoint(
        tmp_path / "mine.ckpt", cnn=MyNet(), transformer=tiny_swin()
    )
    assert loaded.iteration == 1
