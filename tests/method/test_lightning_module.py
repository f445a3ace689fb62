"""AdvMIMModule: method defaults, one training iteration per method, gradient isolation."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from advmim_lightning import AdvMIMModule
from advmim_lightning.networks import Discriminator, UNet
from tiny import (
    TINY_CLASSES,
    TINY_SIZE,
    PairedBatches,
    PoisonedAt,
    StateSnapshots,
    Volumes,
    first_item,
    fit,
    full_state,
    make_module,
    tiny_batch,
    tiny_swin,
    tiny_unet,
)


def test_method_defaults_are_resolved_into_hparams():
    advmim = make_module("advmim")
    assert advmim.hparams.lr == 0.05
    assert advmim.hparams.grad_clip_norm == 5.0
    assert advmim.hparams.sup_weight == 1.0
    assert advmim.hparams.adversarial_weight == 0.001
    assert advmim.hparams.discriminator_weight == 0.1
    assert advmim.hparams.cross_teaching_rampup is False
    ctct = make_module("ctct")
    assert ctct.hparams.lr == 0.01
    assert ctct.hparams.grad_clip_norm == 0.0
    assert ctct.hparams.sup_weight == 0.5
    assert ctct.hparams.cross_teaching_rampup is True
    assert "adversarial_weight" not in ctct.hparams
    sup = make_module("supervised", lr=0.02)
    assert sup.hparams.lr == 0.02
    assert "cross_teaching_weight" not in sup.hparams


def test_arguments_a_method_does_not_use_are_refused():
    with pytest.raises(ValueError, match="adversarial_weight is not used by method='ctct'"):
        make_module("ctct", adversarial_weight=0.1)
    with pytest.raises(ValueError, match="method='semi' is not one of"):
        make_module("semi")


def test_network_mismatch_is_reported():
    with pytest.raises(ValueError, match="cnn predicts 3 classes but num_classes=4"):
        AdvMIMModule(cnn=tiny_unet(num_classes=3), transformer=tiny_swin(), image_size=64)
    with pytest.raises(ValueError, match="img_size=\\(64, 64\\) but image_size=\\(128, 128\\)"):
        AdvMIMModule(cnn=tiny_unet(), transformer=tiny_swin(), image_size=128)


def test_hparams_store_network_specs_not_modules():
    module = make_module()
    spec = module.hparams.cnn
    assert spec["class_path"] == "advmim_lightning.networks.unet.UNet"
    assert spec["init_args"]["channels"] in ((4, 8, 8, 8, 8), [4, 8, 8, 8, 8])
    rebuilt = AdvMIMModule(**{**module.hparams, "max_iterations": 10})
    assert type(rebuilt.cnn) is type(module.cnn)
    assert sum(p.numel() for p in rebuilt.transformer.parameters()) == sum(
        p.numel() for p in module.transformer.parameters()
    )


def test_stored_specs_outside_the_library_are_refused():
    with pytest.raises(ValueError, match=r"refusing to import network class 'os\.system'"):
        AdvMIMModule(cnn={"class_path": "os.system", "init_args": {}}, image_size=64)


@pytest.mark.parametrize(
    ("method", "changed"),
    [
        ("advmim", {"transformer", "cnn", "disc_transformer", "disc_cnn"}),
        ("ctct", {"transformer", "cnn"}),
        ("supervised", {"transformer", "cnn"}),
    ],
)
def test_one_iteration_updates_the_right_parameter_sets(method, changed):
    torch.manual_seed(0)
    module = make_module(method)
    before = copy.deepcopy(module.state_dict())
    trainer = fit(module, 1, labeled_only=method == "supervised")
    assert module.iteration == 1
    assert trainer.global_step == module.optimizer_steps_per_iteration
    after = module.state_dict()
    updated = {
        key.split(".")[0]
        for key, value in after.items()
        if value.dtype.is_floating_point and not torch.equal(value, before[key])
    }
    # batch-norm buffers move with their network, so only the four top-level parts can appear
    assert updated == changed


def test_n_iterations_run_exactly_n_and_lr_follows_poly():
    module = make_module("ctct", max_iterations=3)
    trainer = fit(module, 5, max_epochs=3)
    assert module.iteration == 3
    assert trainer.global_step == 3 * 2
    assert trainer.logged_metrics["train/lr"] == pytest.approx(0.01 * (1 - 2 / 3) ** 0.9)
    # The optimisers already hold the next iteration's rate (what lr monitors read before it).
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0


def test_every_term_is_logged_by_name():
    module = make_module("advmim", loss_variant="paper")
    trainer = fit(module, 1)
    logged = set(trainer.logged_metrics)
    for net in ("cnn", "transformer"):
        for term in (
            "sup_ce",
            "sup_dice",
            "masked_sup_ce",
            "masked_sup_dice",
            "cross_teaching",
            "masked_pseudo_ce",
            "masked_pseudo_dice",
            "adv",
            "disc",
        ):
            assert f"train/{term}_{net}" in logged
    assert {"train/loss", "train/lr"} <= logged


def test_ctct_rampup_weight():
    module = make_module("ctct", max_iterations=100_000)
    module.iteration = 150 * 100
    weight = module.settings.cross_teaching_weight_at(module.iteration)
    assert weight == pytest.approx(0.1 * torch.e ** (-5 * 0.25))
    assert make_module("advmim").settings.cross_teaching_weight_at(0) == 0.1


def test_baselines_freeze_the_unused_mask_tokens():
    module = make_module("ctct")
    assert not module.cnn.mask_token.requires_grad
    assert not module.transformer.mask_token.requires_grad
    assert make_module("advmim").cnn.mask_token.requires_grad


def test_plain_ddp_is_refused_for_advmim_with_the_fix_named():
    from lightning.pytorch.strategies import DDPStrategy

    module = make_module("advmim")
    trainer = pl.Trainer(accelerator="cpu", strategy=DDPStrategy(), devices=1, logger=False)
    module.trainer = trainer
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        module.setup("fit")


def test_validation_and_test_score_whole_volumes_and_write_csv(tmp_path):
    module = make_module("ctct", class_names=["background", "RV", "Myo", "LV"])
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(Volumes(), batch_size=1, collate_fn=first_item)
    (val,) = trainer.validate(module, dataloaders=loader)
    for key in ("val/dice_mean", "val/hd95_mean", "val/asd_mean", "val/nsd_mean", "val/dice_LV"):
        assert key in val
    assert {"val/dice_mean_cnn", "val/dice_mean_transformer"} <= set(val)
    assert 0.0 <= val["val/dice_mean"] <= 1.0
    (test,) = trainer.test(module, dataloaders=loader)
    rows = (tmp_path / "test_metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["case_id", "dice_RV", "dice_Myo"]
    assert [r.split(",")[0] for r in rows[1:]] == ["vol0", "vol1", "mean"]
    assert float(rows[-1].split(",")[rows[0].split(",").index("dice_mean")]) == pytest.approx(
        test["test/dice_mean"], abs=1e-5
    )


def test_sixteen_bit_mixed_precision_is_refused_with_a_reason():
    from lightning.pytorch.plugins import MixedPrecision

    # On CPU Lightning turns "16-mixed" into bf16, so build the fp16 plugin with its scaler.
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module = make_module("advmim")
    with pytest.raises(ValueError, match="precision='16-mixed' is not supported"):
        fit(module, 1, plugins=[plugin])


def test_bf16_mixed_iteration_runs_and_keeps_float32_weights():
    module = make_module("advmim")
    trainer = fit(module, 1, precision="bf16-mixed")
    assert module.iteration == 1
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert torch.isfinite(trainer.logged_metrics["train/loss"])


def test_a_nonfinite_loss_raises_naming_the_iterations_terms_and_cases():
    module = make_module("ctct")

    class Poisoned(PairedBatches):
        def __getitem__(self, i: int) -> dict:
            batch = super().__getitem__(i)
            if i == 1:
                batch["labeled"]["image"][0, 0, 0, 0] = float("nan")
            return batch

    with pytest.raises(FloatingPointError) as err:
        fit(module, dataset=Poisoned(4), log_every_n_steps=2)
    message = str(err.value)
    assert "iterations 0..1" in message
    assert "sup_ce_transformer" in message and "case0" in message


def test_a_short_cpu_run_on_the_phantom_lowers_the_supervised_loss():
    from advmim_lightning import AdvMIMDataModule
    from advmim_lightning.data import PhantomSettings

    torch.manual_seed(0)
    data = AdvMIMDataModule(
        layout="phantom",
        phantom=PhantomSettings(cases=8, slices=3, size=64),
        image_size=(64, 64),
        labeled_cases=4,
        labeled_batch_size=4,
        num_workers=0,
        require_unlabeled=False,
        iterations_per_epoch=40,
    )
    module = make_module("supervised", max_iterations=40, lr=0.05)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/sup_ce_cnn"]))

    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[Record()],
    )
    trainer.fit(module, datamodule=data)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_skip_mode_undoes_an_overflowing_bf16_iteration_in_all_four_parts(caplog):
    module = make_module("advmim", nonfinite_check="skip")
    snapshots = StateSnapshots()
    with caplog.at_level("WARNING", logger="advmim_lightning.method.nonfinite"):
        trainer = fit(
            module,
            dataset=PoisonedAt(4, {2}),
            precision="bf16-mixed",
            log_every_n_steps=2,
            callbacks=[snapshots],
            enable_checkpointing=False,
        )
    states = snapshots.states
    before, after = states["before2"], states["after2"]
    assert before.keys() == after.keys()
    assert any(k.startswith("disc_cnn.") for k in before) and any(
        "running_var" in k for k in before
    )
    for key in before:  # segmenters, discriminators, batch-norm statistics and momenta
        assert torch.equal(before[key], after[key]), key
    changed = [k for k in before if not torch.equal(states["before3"][k], states["after3"][k])]
    assert any(k.startswith("disc_transformer.") for k in changed)
    assert any(k.startswith("cnn.") for k in changed)
    assert module.iteration == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.logged_metrics["train/skipped_iterations"] == 1
    assert "iteration(s) 2 (0-based)" in caplog.text and "u0" in caplog.text


def test_skip_mode_changes_nothing_when_all_is_finite():
    def run(check: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = make_module("advmim", nonfinite_check=check)
        fit(module, 3)
        return full_state(module)

    plain, guarded = run("raise"), run("skip")
    assert plain.keys() == guarded.keys()
    for key, value in plain.items():
        assert torch.equal(value, guarded[key]), key


def test_skip_mode_raises_once_too_many_iterations_in_a_row_were_skipped():
    module = make_module("ctct", nonfinite_check="skip", max_skipped_in_a_row=2)
    with pytest.raises(FloatingPointError, match=r"2 iterations in a row .* diverged"):
        fit(module, dataset=PoisonedAt(4, {1, 2, 3}), log_every_n_steps=1)
    assert module.iteration == 2  # the error came at the second skipped iteration's logging


def trained_state(method: str = "advmim", **options) -> dict[str, torch.Tensor]:
    """Two iterations without dropout (its masks follow the memory layout)."""
    torch.manual_seed(0)
    module = AdvMIMModule(
        cnn=UNet(num_classes=TINY_CLASSES, channels=(4, 8, 8, 8, 8), dropout=(0.0,) * 5),
        transformer=tiny_swin(),
        image_size=(TINY_SIZE, TINY_SIZE),
        method=method,
        **options,
    )
    fit(module, 2, labeled_only=method == "supervised")
    return full_state(module)


@pytest.mark.parametrize("impl", ["for_loop", "foreach", "fused"])
def test_sgd_implementations_give_the_same_advmim_update(impl):
    reference, fast = trained_state(), trained_state(optimizer_impl=impl)
    assert reference.keys() == fast.keys()
    for key, value in reference.items():
        torch.testing.assert_close(fast[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_channels_last_gives_the_same_update_up_to_rounding():
    # Supervised: AdvMIM's pseudo-labels are argmaxes on near-ties at initialisation, where a
    # rounding difference of the other memory layout flips pixels and so the loss.
    reference = trained_state("supervised")
    fast = trained_state("supervised", channels_last=True)
    assert reference.keys() == fast.keys()
    for key, value in reference.items():
        error = torch.linalg.vector_norm(fast[key].double() - value.double())
        assert error <= 1e-3 * torch.linalg.vector_norm(value.double()) + 1e-6, (key, error)
    disc = Discriminator(TINY_CLASSES, 8)
    maps = torch.rand(2, TINY_CLASSES, TINY_SIZE, TINY_SIZE)
    expected = disc(maps)
    disc.to(memory_format=torch.channels_last)
    got = disc(maps.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_and_fused_sgd_are_applied():
    module = make_module("advmim", channels_last=True, optimizer_impl="fused")
    fit(module, 1)
    weights = [p for p in module.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # really another layout
    assert all(opt.defaults["fused"] for opt in module.trainer.optimizers)


def test_compile_networks_compiles_every_trained_part_once_when_fitting(monkeypatch):
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw["mode"]))
    module = make_module("advmim", compile_networks="reduce-overhead")
    module.configure_model()  # outside a fit (a notebook, test, predict): nothing compiles
    assert modes == []
    fit(module, 1)
    assert modes == ["reduce-overhead"] * 4
    fit(module, 1, max_epochs=2)  # a second fit of the same module: compiled once
    assert modes == ["reduce-overhead"] * 4
    with pytest.raises(ValueError, match="compile_networks='fast' is not one of"):
        make_module("advmim", compile_networks="fast")


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones():
    reference = trained_state("supervised")
    compiled = trained_state("supervised", compile_networks="default")
    for key, value in reference.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_fused_sgd_trains_under_bf16_mixed_with_clipping():
    module = make_module("advmim", optimizer_impl="fused")
    trainer = fit(module, 2, precision="bf16-mixed")
    assert module.hparams.grad_clip_norm == 5.0 and module.iteration == 2
    assert all(opt.param_groups[0]["fused"] for opt in trainer.optimizers)
    assert torch.isfinite(trainer.logged_metrics["train/loss"])


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_gradients_are_clipped_per_network_before_each_step(monkeypatch, impl):
    norms = []
    real_step = torch.optim.SGD.step

    def recording_step(self, closure=None):
        # Lightning passes a closure that runs on_before_optimizer_step (the clipping); SGD
        # calls it first, then updates: record the gradients in between.
        if closure is not None:
            with torch.enable_grad():
                closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(self)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    module = make_module("advmim", grad_clip_norm=0.01, optimizer_impl=impl)
    fit(module, 1, precision="bf16-mixed")
    assert len(norms) == 4 and max(norms) <= 0.01 * (1 + 1e-4)
    assert min(norms) > 0.009  # the unclipped gradients are far larger: each was clipped


def _batch_norm_statistics(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k
    }


@pytest.mark.parametrize("method, separate", [("advmim", True), ("ctct", False)])
def test_batch_norm_sees_the_batches_as_the_published_code_feeds_them(method, separate):
    """AdvMIM (public code): each network on x_l, then each on x_u; CTCT: one joint call.

    ``stream_batching="separate"`` makes the public code's calls, bit for bit, dropout draws
    included (the batched default is compared with these calls, dropout off, in
    tests/method/test_stream_batching.py)."""
    from advmim_lightning.method.randomness import iteration_seed

    module = make_module(method, stream_batching="separate")
    assert module.hparams.forward_batching == ("separate" if separate else "joint")
    reference = {name: copy.deepcopy(getattr(module, name)) for name in ("transformer", "cnn")}
    fit(module, 1)

    batch = tiny_batch(seed=0)  # what PairedBatches gave the single iteration
    x_l, x_u = batch["labeled"]["image"], batch["unlabeled"]["image"]
    module.iteration = 0  # replay iteration 0's masks
    masks = iter(module.model.draw_masks(x_l, x_u, module.mask_generator()))
    torch.manual_seed(iteration_seed(module.hparams.rng_seed, 0, 0, 1))  # its dropout draws too
    calls = [x_l, x_u] if separate else [torch.cat([x_l, x_u])]
    for x in calls:
        for name in ("transformer", "cnn"):  # the public code: model (Swin), then model2
            mask = next(masks) if method == "advmim" else None
            reference[name].train()(x, mask=mask) if mask is not None else reference[name](x)
    expected, got = _batch_norm_statistics(reference["cnn"]), _batch_norm_statistics(module.cnn)
    assert expected.keys() == got.keys() and expected
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_forward_batching_is_a_switch_that_changes_the_batch_norm_statistics():
    separate, joint = make_module("advmim"), make_module("advmim", forward_batching="joint")
    joint.load_state_dict(separate.state_dict())
    fit(separate, 1)
    fit(joint, 1)
    a, b = _batch_norm_statistics(separate.cnn), _batch_norm_statistics(joint.cnn)
    assert any(not torch.equal(a[k], b[k]) for k in a if "running_mean" in k)
    with pytest.raises(ValueError, match="forward_batching is not used by method='supervised'"):
        make_module("supervised", forward_batching="joint")
    with pytest.raises(ValueError, match="forward_batching"):
        make_module("advmim", forward_batching="split")


def test_a_ctct_run_shorter_than_its_ramp_up_warns_with_the_weight_it_ends_at():
    module = make_module("ctct", max_iterations=3)  # ramp 200 x 150: weight ~ 0.1 * e^-5
    with pytest.warns(UserWarning) as caught:
        fit(module, 3)
    messages = [str(w.message) for w in caught if "ramps up" in str(w.message)]
    assert messages == [
        "the cross-teaching weight ramps up over rampup_length x rampup_interval = 200 x 150 = "
        "30000 iterations (CTCT's 200 x 150 = its 30000), but max_iterations=3: it ends at "
        "0.000674, 0.67 % of cross_teaching_weight=0.1. To keep the published ramp's shape in "
        "this shorter run, set model.rampup_interval=1 (max_iterations / rampup_length)."
    ]


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("ctct", {"max_iterations": 3, "rampup_length": 2, "rampup_interval": 1}),
        ("ctct", {"max_iterations": 3, "cross_teaching_weight": 0.0}),  # nothing to ramp
        ("advmim", {"max_iterations": 3}),  # constant weight: nothing to ramp
        ("supervised", {"max_iterations": 3}),
    ],
)
def test_no_ramp_up_warning_where_the_ramp_fits_or_there_is_none(method, settings):
    import warnings

    module = make_module(method, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, 3)
    assert not [w for w in caught if "ramps up" in str(w.message)]


def test_an_edit_of_hparams_before_fit_trains_and_is_what_the_checkpoint_records(tmp_path):
    module = make_module("advmim", max_iterations=2)
    module.hparams.lr = 0.2
    module.hparams["adversarial_weight"] = 0.5
    module.hparams.update(grad_clip_norm=1.0)
    assert module.settings.lr == 0.2 and module.model.settings.adversarial_weight == 0.5
    trainer = fit(module, 2, default_root_dir=tmp_path)
    # the poly rate of iteration 2 of 2 from the edited base rate, on every optimiser
    assert trainer.logged_metrics["train/lr"] == pytest.approx(0.2 * (1 - 1 / 2) ** 0.9)
    assert {g["clip_norm"] for o in trainer.optimizers for g in o.param_groups} == {1.0}
    trainer.save_checkpoint(tmp_path / "edited.ckpt")
    saved = torch.load(tmp_path / "edited.ckpt", weights_only=True)["hyper_parameters"]
    assert (saved["lr"], saved["adversarial_weight"], saved["grad_clip_norm"]) == (0.2, 0.5, 1.0)
    assert module.hparams_initial["lr"] == 0.2  # what loggers record at fit start


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"num_classes": 5}, r"num_classes cannot change once the networks are built \(it is 4"),
        ({"method": "ctct"}, r"method cannot change once the networks are built"),
        ({"eval_network": "both"}, r"eval_network='both' is not one of"),
        ({"learning_rate": 0.1}, r"learning_rate is not a setting of AdvMIMModule"),
        ({"max_iterations": 0}, r"max_iterations must be >= 1, got 0"),
    ],
)
def test_an_edit_of_hparams_that_cannot_train_is_refused_and_changes_nothing(edit, message):
    module = make_module("advmim")
    before = dict(module.hparams)
    with pytest.raises(ValueError, match=message):
        module.hparams.update(edit)
    assert dict(module.hparams) == before and module.settings.hparams() == {
        k: v for k, v in before.items() if k not in ("cnn", "transformer")
    }
    with pytest.raises(ValueError, match="cannot be removed"):
        del module.hparams["lr"]


def test_a_baseline_refuses_an_edit_of_a_setting_it_does_not_use():
    module = make_module("ctct")
    with pytest.raises(ValueError, match=r"masked_sup_weight is not used by method='ctct'"):
        module.hparams.masked_sup_weight = 1.0
    assert "masked_sup_weight" not in module.hparams


def test_without_class_names_the_metrics_take_the_data_modules(tmp_path):
    from advmim_lightning import AdvMIMDataModule

    module = make_module("advmim")
    assert module.class_names == ["background", "class1", "class2", "class3"]
    data = AdvMIMDataModule(
        layout="phantom", image_size=(64, 64), settings={"cache_dir": str(tmp_path)}
    )
    data.setup("validate")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.datamodule = data
    module.trainer = trainer
    module.setup("validate")
    assert (
        module.class_names == list(data.class_names) != ["background", "class1", "class2", "class3"]
    )
    assert module.evaluator.val_metrics.class_names == tuple(data.class_names[1:])
    assert module.hparams.class_names == list(data.class_names)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true"])
def test_advmim_trains_at_every_true_precision(precision):
    dtype = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}
    module = make_module("advmim", max_iterations=1)
    trainer = fit(module, 1, precision=precision)
    assert module.iteration == 1
    assert module.model.discriminators["cnn"].conv1.weight.dtype == dtype[precision]
    assert torch.isfinite(trainer.logged_metrics["train/disc_cnn"])
    assert torch.isfinite(trainer.logged_metrics["train/adv_transformer"])


def test_a_segmenter_without_a_mask_argument_is_refused_naming_the_contract_and_wrapper():
    from monai.networks.nets import UNet as MonaiUNet

    bare = MonaiUNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(4, 8), strides=(2,))
    with pytest.raises(TypeError) as info:
        AdvMIMModule(cnn=bare, transformer=tiny_swin(), image_size=(TINY_SIZE, TINY_SIZE))
    message = str(info.value)
    assert "the cnn network (UNet) takes no mask argument" in message
    assert "net(x, mask=m)" in message and "PixelMaskedSegmenter" in message
    assert "docs/python-api.md" in message
    # the baselines never pass a mask: the bare network is welcome there
    AdvMIMModule(cnn=bare, transformer=tiny_swin(), image_size=(64, 64), method="ctct")


def test_one_network_instance_in_both_slots_is_refused():
    net = tiny_unet()
    with pytest.raises(ValueError, match="cnn and transformer are the same UNet instance"):
        AdvMIMModule(cnn=net, transformer=net, image_size=(TINY_SIZE, TINY_SIZE))


def test_fit_restores_torchs_global_generator_it_reseeds_every_iteration():
    module = make_module("ctct", max_iterations=2)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    fit(module, 2)
    assert torch.equal(torch.rand(3), expected)


def test_a_trainer_limit_shorter_than_max_iterations_is_warned_once_at_fit_start():
    module = make_module("ctct", max_iterations=10)
    with pytest.warns(UserWarning) as caught:
        fit(module, 5, max_steps=2 * 2)  # 2 iterations of CTCT's 2 optimiser steps
    messages = [str(w.message) for w in caught if "max_steps / max_epochs" in str(w.message)]
    assert len(messages) == 1 and module.iteration == 2
    lr = 0.01 * (1 - 2 / 10) ** 0.9
    assert messages[0].startswith(
        "the trainer's max_steps / max_epochs end this fit after iteration 2, before "
        f"max_iterations=10: the poly learning rate is then {lr:.3g} (of lr=0.01)"
    )
    with pytest.warns(UserWarning) as caught:
        fit(make_module("ctct", max_iterations=5), 5, max_epochs=1)  # 5 batches: no limit hit
    assert not [w for w in caught if "max_steps / max_epochs" in str(w.message)]


def test_two_validation_loaders_are_scored_apart_under_their_own_names():
    module = make_module("advmim", max_iterations=1, nsd_tolerance=[2.0, 1.0, 1.0])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    loaders = [DataLoader(Volumes(2), batch_size=None), DataLoader(Volumes(3), batch_size=None)]
    trainer.validate(module, dataloaders=loaders, verbose=False)
    logged = trainer.callback_metrics
    assert {"val/dice_mean", "val/dice_mean/dataloader_idx_0"} <= set(logged)
    assert {"val/dice_mean/dataloader_idx_1", "val/dice_mean_cnn/dataloader_idx_1"} <= set(logged)
    assert module.hparams.nsd_tolerance == [2.0, 1.0, 1.0]


def test_a_batched_evaluation_item_is_refused_naming_the_item_and_the_fix():
    module = make_module("advmim")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError) as info:
        trainer.validate(module, dataloaders=DataLoader(Volumes(1), batch_size=1), verbose=False)
    message = str(info.value)
    assert "validation item" in message and "'image' has shape (1, 1, 3, 40, 40)" in message
    assert "batch_size=None" in message


def test_hparams_yaml_holds_plain_lists(tmp_path):
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    module = make_module("advmim", max_iterations=1)
    fit(module, 1, logger=CSVLogger(tmp_path, name="run"))
    saved = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert saved["image_size"] == [TINY_SIZE, TINY_SIZE] and saved["lr"] == 0.05


def test_a_copied_module_edits_its_own_settings_and_dict_methods_cannot_bypass_them():
    module = make_module("advmim")
    twin = copy.deepcopy(module)
    twin.hparams.lr = 0.5
    assert (twin.settings.lr, module.settings.lr) == (0.5, 0.05)
    record = twin.hparams
    record |= {"adversarial_weight": 0.2}
    assert twin.settings.adversarial_weight == 0.2 == twin.hparams.adversarial_weight
    twin.hparams.nsd_tolerance = [5.0, 3.0, 3.0]
    assert twin.evaluator.test_metrics.nsd_tolerances == (5.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="nsd_tolerance must give one value per foreground"):
        twin.hparams.nsd_tolerance = [1.0, 2.0]
    for refused in (twin.hparams.clear, twin.hparams.popitem):
        with pytest.raises(ValueError, match="cannot be removed"):
            refused()
    assert twin.hparams.lr == 0.5
