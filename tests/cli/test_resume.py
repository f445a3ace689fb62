"""Exact resume: an interrupted and resumed run ends with the same weights as a straight one."""

from __future__ import annotations

from pathlib import Path

import torch

from advmim_lightning.run.main import main
from tiny import assert_same_training_state, sigkill_once_checkpointed

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))


def fit(tmp_path: Path, name: str, *extra: str) -> Path:
    main(
        [
            "fit",
            "-c",
            str(ROOT / "configs/quickstart.yaml"),
            "-c",
            TINY,
            "--runs_dir",
            str(tmp_path),
            "--run_name",
            name,
            "--wandb_mode",
            "disabled",
            "--model.max_iterations",
            "5",
            "--trainer.limit_val_batches",
            "0",
            *extra,
        ]
    )
    return tmp_path / name / "checkpoints" / "last.ckpt"


def test_interrupted_and_resumed_run_matches_the_straight_run_bitwise(tmp_path):
    straight = torch.load(fit(tmp_path, "straight"), weights_only=True)
    # stop after 2 iterations (4 optimiser steps each), then resume the same run to the end
    fit(tmp_path, "resumed", "--trainer.max_steps", "8")
    first_part = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert first_part["state_dict"]["iteration"] == 2
    resumed = torch.load(fit(tmp_path, "resumed", "--ckpt_path", "last"), weights_only=True)
    assert resumed["state_dict"]["iteration"] == straight["state_dict"]["iteration"] == 5
    assert_same_training_state(resumed, straight)


def test_truncated_or_foreign_checkpoints_are_refused_naming_the_file(tmp_path, capsys):
    import pickle

    import pytest

    good = fit(tmp_path, "ok", "--model.max_iterations", "1")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(pickle.dumps({"state_dict": {}, "payload": Path("x")}))
    for bad, reason in ((truncated, "not a readable checkpoint"), (foreign, "not a readable")):
        with pytest.raises(SystemExit) as exit_info:
            fit(tmp_path, "ok", "--ckpt_path", str(bad))
        message = str(exit_info.value.code)
        assert str(bad) in message and reason in message


def test_a_run_killed_with_sigkill_resumes_to_the_straight_run_with_workers(tmp_path):
    import sys

    iterations = "24"
    workers = ["--data.num_workers", "2", "--data.loaders.persistent_workers", "false"]
    straight = fit(tmp_path, "straight", "--model.max_iterations", iterations, *workers)

    advmim = Path(sys.executable).with_name("advmim")
    command = [
        str(advmim), "fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
        "--runs_dir", str(tmp_path), "--run_name", "killed", "--wandb_mode", "disabled",
        "--model.max_iterations", iterations, "--trainer.limit_val_batches", "0",
        "--checkpoint_every", "2", *workers,
    ]  # fmt: skip
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    sigkill_once_checkpointed(command, last)
    killed_at = int(torch.load(last, weights_only=True)["state_dict"]["iteration"])
    assert 2 <= killed_at < int(iterations) and killed_at % 2 == 0
    # a kill while saving leaves at most a temporary file, which resuming ignores
    (last.parent / "last.ckpt.tmp").write_bytes(b"truncated")

    resumed = torch.load(
        fit(
            tmp_path,
            "killed",
            "--model.max_iterations",
            iterations,
            *workers,
            "--ckpt_path",
            "last",
        ),
        weights_only=True,
    )
    reference = torch.load(straight, weights_only=True)
    assert (
        resumed["state_dict"]["iteration"]
        == reference["state_dict"]["iteration"]
        == int(iterations)
    )
    assert_same_training_state(resumed, reference)


def test_ckpt_path_keeps_stated_run_time_settings_and_warns_about_the_rest(tmp_path, caplog):
    import yaml

    checkpoint = fit(tmp_path, "run", "--model.max_iterations", "1")
    with caplog.at_level("WARNING", logger="advmim_lightning.run.cli"):
        main(
            [
                "test", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
                "--runs_dir", str(tmp_path), "--run_name", "run", "--wandb_mode", "disabled",
                "--ckpt_path", str(checkpoint), "--model.eval_network", "ensemble",
                "--model.discriminator_base_channels", "4",
            ]
        )  # fmt: skip
    used = yaml.safe_load((tmp_path / "run" / "test_config.yaml").read_text())["model"]
    assert used["eval_network"] == "ensemble"  # quickstart trains with "cnn"
    assert used["discriminator_base_channels"] == 8  # the checkpoint's (tiny.yaml), not 4
    assert "model.discriminator_base_channels=4 (checkpoint: 8)" in caplog.text
    assert "eval_network" not in caplog.text.split("Only")[0]

    # no method config: the linked sizes and the method are left at their defaults
    caplog.clear()
    main(
        [
            "test", "-c", TINY, "--runs_dir", str(tmp_path), "--run_name", "bare",
            "--wandb_mode", "disabled", "--ckpt_path", str(checkpoint),
            "--model.eval_network=transformer",
        ]
    )  # fmt: skip
    used = yaml.safe_load((tmp_path / "bare" / "test_config.yaml").read_text())["model"]
    assert used["eval_network"] == "transformer" and used["max_iterations"] == 1
    assert "Key" not in caplog.text and "usage" not in caplog.text


def test_a_class_path_spelled_another_way_for_the_same_class_does_not_warn(tmp_path, caplog):
    # tiny.yaml names advmim_lightning.networks.UNet / .SwinUNet (the re-exports); checkpoints
    # store where the classes are defined (advmim_lightning.networks.unet.UNet, ...).
    from advmim_lightning.run.resume import _plain

    checkpoint = fit(tmp_path, "run", "--model.max_iterations", "1")
    stored = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert stored["cnn"]["class_path"] == "advmim_lightning.networks.unet.UNet"
    with caplog.at_level("WARNING", logger="advmim_lightning.run.cli"):
        main(
            [
                "test", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
                "--runs_dir", str(tmp_path), "--run_name", "run", "--wandb_mode", "disabled",
                "--ckpt_path", str(checkpoint),
            ]
        )  # fmt: skip
    assert "fixes the model's settings" not in caplog.text
    # other classes, and paths naming nothing loaded, still differ
    unet, swin = "advmim_lightning.networks.UNet", "advmim_lightning.networks.swin_unet.SwinUNet"

    def same(key: str, a: str, b: str) -> bool:
        return _plain(a, key) == _plain(b, key)

    assert same("cnn.class_path", unet, "advmim_lightning.networks.unet.UNet")
    assert not same("cnn.class_path", unet, swin)
    assert not same("cnn.class_path", "not_loaded.UNet", "not_loaded.unet.UNet")
    assert not same("cnn.init_args.upsampling", "bilinear", "transposed")


def test_a_checkpoint_naming_a_foreign_class_is_refused_before_importing_it(tmp_path, monkeypatch):
    import pytest

    marker = tmp_path / "imported"
    (tmp_path / "payload_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Net: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = torch.load(fit(tmp_path, "ok", "--model.max_iterations", "1"), weights_only=True)
    injections = {
        "cnn": {"class_path": "payload_module.Net", "init_args": {}},
        "transformer": "payload_module.Net",  # a plain string is read as a class path
        "transformer.class_path": "payload_module.Net",  # dotted keys are expanded
        "_instantiator": "payload_module.Net",
    }
    for key, value in injections.items():
        bad = tmp_path / f"{key}.ckpt"
        torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], key: value}}, bad)
        with pytest.raises(SystemExit) as exit_info:
            fit(tmp_path, "ok", "--ckpt_path", str(bad))
        message = str(exit_info.value.code)
        assert str(bad) in message and "'payload_module.Net'" in message
        assert "ADVMIM_TRUSTED_CLASSES" in message
        assert not marker.exists()  # refused without running the module's code
    from advmim_lightning import AdvMIMModule
    from advmim_lightning.networks import UNet

    legacy = tmp_path / "legacy.ckpt"  # Lightning also merges older hyper-parameter entries
    torch.save({**good, "hparams": {"transformer": {"class_path": "payload_module.Net"}}}, legacy)
    for name in ("cnn.ckpt", "transformer.ckpt", "_instantiator.ckpt", "legacy.ckpt"):
        with pytest.raises(ValueError, match=r"names the class 'payload_module\.Net'"):
            AdvMIMModule.load_from_checkpoint(tmp_path / name)
    assert not marker.exists()
    # a network given as an instance is not rebuilt, so its stored spec is not imported
    own_cnn = UNet(num_classes=4, channels=(4, 8, 8, 8, 8), upsampling="bilinear")  # quickstart
    restored = AdvMIMModule.load_from_checkpoint(tmp_path / "cnn.ckpt", cnn=own_cnn)
    assert restored.cnn is own_cnn and not marker.exists()


def test_a_resumed_run_takes_the_stated_speed_options(tmp_path):
    first = fit(tmp_path, "run", "--model.max_iterations", "1", "--model.optimizer_impl", "fused")
    group = torch.load(first, weights_only=True)["optimizer_states"][0]["param_groups"][0]
    assert group["fused"] is True
    resumed = fit(tmp_path, "run", "--model.max_iterations", "2", "--ckpt_path", str(first),
                  "--model.optimizer_impl", "for_loop")  # fmt: skip
    checkpoint = torch.load(resumed, weights_only=True)
    assert checkpoint["state_dict"]["iteration"] == 2
    for state in checkpoint["optimizer_states"]:
        assert state["param_groups"][0]["fused"] is None
        assert state["param_groups"][0]["foreach"] is False


def test_stated_model_settings_are_found_in_every_kind_of_config(tmp_path):
    from advmim_lightning.run.resume import _model_keys_in_config

    nested = tmp_path / "nested.yaml"
    nested.write_text("fit:\n  model:\n    eval_network: cnn\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("model:\n  cnn:\n    init_args:\n      channels: [4, 8]\n")
    model_only = tmp_path / "model.yaml"
    model_only.write_text("eval_network: cnn\nmax_iterations: 3\n")
    assert _model_keys_in_config(nested) == {"eval_network"}
    assert _model_keys_in_config(flat) == {"cnn.init_args.channels"}
    assert _model_keys_in_config(model_only, section=None) == {"eval_network", "max_iterations"}
    assert _model_keys_in_config(tmp_path / "absent.yaml") == set()


def test_checkpoint_every_at_the_validation_steps_still_keeps_the_best_checkpoint(tmp_path):
    # last.ckpt refreshed after iterations 2 and 4 must not stop the best checkpoint of the
    # validations at the same iterations
    last = fit(
        tmp_path,
        "both",
        "--model.max_iterations",
        "4",
        "--trainer.limit_val_batches",
        "1.0",
        "--trainer.val_check_interval",
        "2",
        "--checkpoint_every",
        "2",
    )
    best = [p.name for p in last.parent.glob("best-*.ckpt")]
    assert len(best) == 1 and best[0] in ("best-step=8.ckpt", "best-step=16.ckpt")  # 4 per it.
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 4
