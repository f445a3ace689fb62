"""The ``advmim`` command line end to end on tiny generated data (fit/validate/test/predict)."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_nifti
from advmim_lightning.networks import IMAGENET_SWIN_T
from advmim_lightning.run.cli import build_cli
from advmim_lightning.run.main import main
from tiny import cli_error, timm_swin_state, write_hf_cache

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TINY = str(Path(__file__).with_name("tiny.yaml"))


def run(*words: str) -> None:
    main([str(w) for w in words])


def common(tmp_path: Path, name: str = "run") -> list[str]:
    return ["--runs_dir", str(tmp_path / "runs"), "--run_name", name, "--wandb_mode", "disabled"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(config, capsys):
    # trainer/*.yaml are composed after a method config, as their headers say
    words = ["fit"]
    if config.parent.name == "trainer":
        words += ["-c", str(ROOT / "configs/acdc/advmim.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        run(*words, "-c", config, "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed
    if config.parent.name in ("acdc", "nifti", "trainer"):  # the published ImageNet start
        assert f"pretrained: {IMAGENET_SWIN_T}" in printed


def test_help_works_from_the_console_script_and_python_m():
    for command in (["advmim"], [sys.executable, "-m", "advmim_lightning"]):
        if command == ["advmim"]:
            command = [str(Path(sys.executable).with_name("advmim"))]
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "fit" in done.stdout and "predict" in done.stdout


def test_num_classes_and_image_size_are_stated_once_and_linked():
    cli = build_cli(
        [
            "-c",
            str(ROOT / "configs/quickstart.yaml"),
            "-c",
            TINY,
            "--data.image_size",
            "[64, 64]",
            "--wandb_mode",
            "disabled",
        ],
        run=False,
    )
    assert cli.model.settings.num_classes == cli.datamodule.num_classes == 4
    assert cli.model.cnn.num_classes == 4 and cli.model.transformer.num_classes == 4
    assert cli.model.transformer.img_size == (64, 64)
    assert cli.model.settings.image_size == (64, 64)
    assert cli.model.class_names == cli.datamodule.class_names
    with pytest.raises(SystemExit):  # linked: the model side cannot be set on its own
        build_cli(
            ["-c", str(ROOT / "configs/quickstart.yaml"), "--model.num_classes", "3"], run=False
        )


def test_supervised_method_sets_require_unlabeled_false():
    cli = build_cli(
        [
            "-c",
            str(ROOT / "configs/quickstart.yaml"),
            "-c",
            TINY,
            "--model.method",
            "supervised",
            "--wandb_mode",
            "disabled",
        ],
        run=False,
    )
    assert cli.datamodule.require_unlabeled is False
    assert cli.model.settings.method == "supervised"


def test_phantom_fit_validate_test_predict_and_resume(tmp_path):
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY, *common(tmp_path, "qs")]
    run("fit", *base, "--model.max_iterations", "4", "--trainer.val_check_interval", "2")
    run_dir = tmp_path / "runs" / "qs"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(r.get("val/dice_mean") for r in rows)
    assert any(r.get("train/adv_cnn") for r in rows)
    assert (run_dir / "panels").is_dir() and list((run_dir / "panels").glob("*.png"))
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 4

    # resume the named run from its own last.ckpt and finish 6 iterations in all
    run(
        "fit",
        *base,
        "--model.max_iterations",
        "6",
        "--trainer.val_check_interval",
        "2",
        "--ckpt_path",
        "last",
    )
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 6

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(steps) and len(steps) == 6  # the resumed run appended its rows

    run("validate", *base, "--ckpt_path", last)
    run("test", *base, "--ckpt_path", last)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len([r for r in rows if r.get("train/loss")]) == 6  # test kept the training rows
    assert any(r.get("test/dice_mean") for r in rows)
    table = list(csv.reader((run_dir / "test_metrics.csv").open()))
    assert table[0][0] == "case_id" and table[-1][0] == "mean"
    assert "dice_LV" in table[0] and "hd95_mean" in table[0]

    out = tmp_path / "pred"
    run("predict", *base, "--ckpt_path", last, "--prediction_writer.output_dir", out)
    files = sorted(out.glob("*.nii.gz"))
    assert files, "predict wrote no file"
    image = nib.load(files[0])
    assert image.get_fdata().max() < 4
    assert np.allclose(np.diag(image.affine)[:3] != 0, True)


def test_acdc_layout_fit_test_predict(tmp_path):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64, spacing=True)
    base = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY, *common(tmp_path)]
    base += ["--data.root", root, "--data.labeled_cases", "2"]
    run("fit", *base, "--trainer.fast_dev_run", "1")
    untrained = ["--trainer.fast_dev_run", "1", "--allow_random_weights", "true"]
    run("test", *base, *untrained)
    out = tmp_path / "pred"
    run("predict", *base, *untrained, "--prediction_writer.output_dir", out)
    import h5py

    files = sorted(out.glob("*.h5"))
    assert files
    with h5py.File(files[0]) as handle:
        assert handle["label"].ndim == 3


def test_nifti_layout_predictions_keep_the_input_affine(tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti", size=64)
    base = ["-c", ROOT / "configs/nifti/advmim.yaml", "-c", TINY, *common(tmp_path)]
    base += ["--data.root", root]
    run("fit", *base, "--trainer.fast_dev_run", "1")
    out = tmp_path / "pred"
    untrained = ["--trainer.fast_dev_run", "1", "--allow_random_weights", "true"]
    run("predict", *base, *untrained, "--prediction_writer.output_dir", out)
    written = sorted(out.glob("*.nii.gz"))
    assert written
    for path in written:
        case = path.name[: -len(".nii.gz")]
        source = nib.load(root / "imagesTs" / f"{case}_0000.nii.gz")
        prediction = nib.load(path)
        assert np.allclose(prediction.affine, source.affine)
        assert prediction.shape == source.shape


def test_fit_starts_the_swin_unet_from_the_hugging_face_cache(tmp_path, monkeypatch, caplog):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64, spacing=True)
    words = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY, *common(tmp_path)]
    words += ["--data.root", root, "--data.labeled_cases", "2"]
    words += ["--model.transformer.init_args.pretrained", IMAGENET_SWIN_T]
    fast = ["--trainer.fast_dev_run", "1"]

    # offline (conftest) with an empty cache: a clean error before anything runs
    message = cli_error("fit", *words, *fast)
    assert message.startswith(
        f"advmim: error: networks/pretrained.py: the Swin ImageNet weights '{IMAGENET_SWIN_T}' "
        "are not in the Hugging Face cache "
    )
    assert "hf_hub_download(" in message and "pass a local weights file" in message

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    state = timm_swin_state()  # timm's format at tests/cli/tiny.yaml's Swin size
    path = write_hf_cache(cache, IMAGENET_SWIN_T, state)
    encoder = build_cli([str(w) for w in words], run=False).model.transformer.state_dict()
    for key in ("patch_embed.proj.weight", "layers.1.downsample.reduction.weight", "norm.bias"):
        assert torch.equal(encoder[key], state[key]), key
    assert torch.equal(
        encoder["layers_up.3.blocks.0.attn.qkv.weight"], state["layers.0.blocks.0.attn.qkv.weight"]
    )
    with caplog.at_level(logging.INFO, logger="advmim_lightning"):
        run("fit", *words, "--model.max_iterations", "1", "--trainer.limit_val_batches", "0")
    assert f"timm weights from {IMAGENET_SWIN_T} (Hugging Face cache: {path}): " in caplog.text
    assert "starts from random weights" not in caplog.text

    # with a checkpoint the weights come from it: no cache needed, no settings warning
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    caplog.clear()
    last = tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="advmim_lightning"):
        for ckpt in ("last", last):
            run("test", *words, *fast, "--ckpt_path", ckpt)
    assert "timm weights from" not in caplog.text
    assert "fixes the model's settings" not in caplog.text


def test_default_sized_swin_unet_from_random_weights_warns_once(tmp_path, caplog):
    phantom = ["--data.layout", "phantom", "--data.phantom.cases", "6"]
    phantom += ["--data.phantom.slices", "2", "--data.phantom.size", "32"]
    phantom += ["--data.labeled_cases", "2", "--data.num_workers", "0"]
    phantom += ["--data.labeled_batch_size", "2", "--data.unlabeled_batch_size", "2"]
    # the warning comes at fit start: stop there (no step of the 27 M-parameter Swin-UNet)
    stop = ["--trainer.max_steps", "0", "--trainer.num_sanity_val_steps", "0"]
    stop += ["--trainer.enable_checkpointing", "false", "--trainer.accelerator", "cpu"]
    acdc = ["-c", ROOT / "configs/acdc/advmim.yaml", *common(tmp_path)]
    no_weights = ["--model.transformer.init_args.pretrained", "null"]
    with caplog.at_level(logging.INFO, logger="advmim_lightning"):
        run("fit", *acdc, *phantom, *no_weights, *stop)
    warned = [r for r in caplog.records if "starts from random weights" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert f"--model.transformer.init_args.pretrained {IMAGENET_SWIN_T}" in warned[0].getMessage()
    assert "all-background" in warned[0].getMessage()

    caplog.clear()  # small custom networks (the quickstart's kind) do not warn
    with caplog.at_level(logging.INFO, logger="advmim_lightning"):
        run("fit", *acdc, "-c", TINY, *phantom, *stop)
    assert "starts from random weights" not in caplog.text


def test_wandb_logger_runs_offline_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY]
    base += ["--runs_dir", tmp_path / "runs", "--run_name", "wb", "--wandb_mode", "offline"]
    run("fit", *base, "--model.max_iterations", "1", "--trainer.limit_val_batches", "0")
    offline = list((tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*"))
    assert offline, "no offline wandb run folder"


def test_prepare_converts_raw_acdc_and_fit_reads_the_result(tmp_path):
    from advmim_lightning.data.synthetic import write_tiny_raw_acdc

    raw = write_tiny_raw_acdc(tmp_path / "raw", num_patients=5, size=64)
    out = tmp_path / "ACDC"
    run(
        "prepare",
        "--input",
        raw,
        "--output",
        out,
        "--val-fraction",
        "0.2",
        "--test-fraction",
        "0.2",
    )
    assert (out / "train_slices.list").is_file() and (out / "test.list").is_file()
    base = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY, *common(tmp_path)]
    run(
        "fit", *base, "--data.root", out, "--data.labeled_cases", "1", "--trainer.fast_dev_run", "1"
    )
    with pytest.raises(SystemExit) as exit_info:
        run("prepare", "--input", tmp_path / "missing", "--output", tmp_path / "x")
    assert exit_info.value.code == 1


def test_bad_input_through_the_cli_names_what_is_wrong(tmp_path):
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY, *common(tmp_path, "bad")]
    fast = ["--trainer.fast_dev_run", "1"]
    message = cli_error("fit", *base, "--data.num_classes", "3", *fast)
    assert "num_classes=3" in message and "expected num_classes=4" in message
    missing = tmp_path / "swin_tiny_patch4_window7_224.pth"
    # jsonargparse wraps the network's FileNotFoundError; the message is unwrapped
    message = cli_error("fit", *base, "--model.transformer.init_args.pretrained", missing, *fast)
    assert message.startswith(f"advmim: error: networks/pretrained.py: Swin ImageNet checkpoint "
                              f"not found at '{missing}'")  # fmt: skip
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()  # nothing half-written

    root = write_tiny_nifti(tmp_path / "nifti", size=64)
    label = root / "labelsTr" / "case_000.nii.gz"
    image = nib.load(label)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, image.affine), label)
    nifti = ["-c", ROOT / "configs/nifti/advmim.yaml", "-c", TINY, *common(tmp_path, "bad")]
    nifti += ["--data.labeled_cases", "4"]  # the config's count (tiny.yaml's 3 is the phantom's)
    message = cli_error("fit", *nifti, "--data.root", root, *fast)
    assert f"{label}: label value(s) [9] outside [0, 4) (num_classes=4)" in message
    message = cli_error("fit", *nifti, "--data.root", tmp_path / "absent", *fast)
    assert str(tmp_path / "absent") in message


def test_an_unwritable_output_folder_fails_before_anything_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY, "--wandb_mode", "disabled"]
    message = cli_error("fit", *base, "--runs_dir", blocker / "runs", "--trainer.fast_dev_run", "1")
    assert (
        f"cannot write the run folder (--runs_dir/--run_name) {blocker}/runs/quickstart" in message
    )
    assert "Not a directory" in message

    run("fit", *base, *common(tmp_path), "--trainer.fast_dev_run", "1")
    checkpoint = tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt"
    run("fit", *base, *common(tmp_path), "--model.max_iterations", "1",
        "--trainer.limit_val_batches", "0")  # fmt: skip
    message = cli_error("predict", *base, *common(tmp_path), "--ckpt_path", checkpoint,
                        "--prediction_writer.output_dir", blocker / "predictions")  # fmt: skip
    assert f"cannot write the prediction folder (prediction_writer.output_dir) {blocker}" in message


def test_only_errors_the_library_raises_on_purpose_become_one_line(monkeypatch):
    import advmim_lightning.run.main as cli_main

    def broken_cli(args):
        return torch.zeros(2) + torch.zeros(3)  # a RuntimeError inside torch: a bug, not input

    monkeypatch.setattr(cli_main, "build_cli", broken_cli)
    with pytest.raises(RuntimeError):
        main(["fit"])

    def raises_value_error_outside(args):
        raise ValueError("raised outside the package")

    monkeypatch.setattr(cli_main, "build_cli", raises_value_error_outside)
    with pytest.raises(ValueError, match="raised outside the package"):
        main(["fit"])  # traceback kept: the innermost frame is not the library's

    def raises_library_error(args):
        from advmim_lightning.method.config import check_choice

        check_choice("eval_network", "best", ("cnn",))

    monkeypatch.setattr(cli_main, "build_cli", raises_library_error)
    message = cli_error("fit")
    assert "eval_network='best' is not one of ['cnn']" in message
    monkeypatch.setenv("ADVMIM_DEBUG", "1")
    with pytest.raises(ValueError):
        main(["fit"])


def _break_missing_image(root: Path) -> Path:
    # (a missing *label* is allowed: images without a label file are the unlabeled pool)
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    return root / "labelsTr" / "case_001.nii.gz"


def _break_label_shape(root: Path) -> Path:
    path = root / "labelsTr" / "case_001.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.uint8), image.affine), path)
    return path


def _break_nan_voxel(root: Path) -> Path:
    path = root / "imagesTr" / "case_002_0000.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[1, 1, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return path


def _break_unreadable_image(root: Path) -> Path:
    path = root / "imagesTr" / "case_003_0000.nii.gz"
    path.write_bytes(b"not a nifti file")
    return path


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_break_missing_image, "label without an image"),
        (_break_label_shape, "shape"),
        (_break_nan_voxel, "NaN"),
        (_break_unreadable_image, "read"),
    ],
    ids=["missing-file", "shape-mismatch", "nan-voxel", "unreadable-file"],
)
def test_each_data_error_stops_the_cli_naming_the_file(tmp_path, breakage, expected):
    root = write_tiny_nifti(tmp_path / "nifti", size=64)
    broken = breakage(root)
    base = ["-c", ROOT / "configs/nifti/advmim.yaml", "-c", TINY, *common(tmp_path, "bad")]
    message = cli_error("fit", *base, "--data.root", root, "--trainer.fast_dev_run", "1")
    assert str(broken) in message and expected.lower() in message.lower(), message
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def test_an_empty_unlabeled_pool_stops_the_cli(tmp_path):
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY, *common(tmp_path, "bad")]
    message = cli_error("fit", *base, "--data.labeled_cases", "4", "--trainer.fast_dev_run", "1")
    assert "unlabeled" in message, message
