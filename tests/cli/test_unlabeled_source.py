"""The ``advmim`` command with a second, unlabeled source: a labeled source phantom plus a
folder of unlabeled target-domain phantom images (with a labeled evaluation folder)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advmim_lightning.data.synthetic import write_tiny_image_folder
from advmim_lightning.run.main import main
from tiny import assert_same_training_state, sigkill_once_checkpointed

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 unlabeled target-domain images and 3 labeled evaluation images, 64 x 64."""
    return write_tiny_image_folder(
        tmp_path_factory.mktemp("target"), num_images=3, num_eval=3, slices=3, size=64
    )


def words(runs: Path, name: str, target: Path, *extra: str) -> list[str]:
    return [
        "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
        "--runs_dir", str(runs), "--run_name", name, "--wandb_mode", "disabled",
        "--data.unlabeled_source", "advmim_lightning.data.ImageFolderSource",
        "--data.unlabeled_source.root", str(target),
        "--data.unlabeled_source.images", "images",
        "--data.unlabeled_source.eval_images", "imagesVal",
        "--data.unlabeled_source.eval_labels", "labelsVal",
        "--data.unlabeled_source.settings.normalization", "zscore",
        "--data.eval_source", "second",
        *extra,
    ]  # fmt: skip


def test_one_flag_of_the_second_phantom_keeps_the_default_second_phantom(tmp_path):
    """``--data.unlabeled_phantom.domain_strength 0.5`` alone: the main phantom (6 cases of 3
    slices at 64 x 64, heart 1.6x) in the target domain with seed 1, at strength 0.5; its cache
    file says so."""
    cache = tmp_path / "cache"
    main(
        [
            "fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
            "--runs_dir", str(tmp_path), "--run_name", "mild", "--wandb_mode", "disabled",
            "--trainer.fast_dev_run", "1", "--data.settings.cache_dir", str(cache),
            "--data.unlabeled_layout", "phantom",
            "--data.unlabeled_settings.cache_dir", str(cache),
            "--data.unlabeled_phantom.domain_strength", "0.5",
        ]
    )  # fmt: skip
    keys = sorted(p.name.rsplit("_", 1)[0] for p in cache.glob("phantom_*.npz"))
    assert keys == ["phantom_v2-6-3-64-0-h1.6", "phantom_v2-6-3-64-1-h1.6-target-s0.5"]


def test_fit_test_and_predict_on_the_unlabeled_target_folder(tmp_path, target):
    run = tmp_path / "domain"
    common = words(tmp_path, "domain", target, "--model.max_iterations", "3")
    main(["fit", *common, "--trainer.val_check_interval", "3"])
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    hparams = checkpoint["datamodule_hyper_parameters"]
    assert hparams["eval_source"] == "second" and hparams["unlabeled_pool"] == "second"
    assert "unlabeled_source" not in hparams  # a source object is configuration, not a value
    main(["test", *common, "--ckpt_path", "last"])
    with (run / "test_metrics.csv").open(newline="") as handle:
        cases = [row["case_id"] for row in csv.DictReader(handle)]
    assert cases == ["img_003", "img_005", "mean"]  # the target's test cases (seeded split)
    main(["predict", *common, "--ckpt_path", "last"])
    written = sorted(p.name for p in (run / "predictions").iterdir())
    assert written == ["img_003.nii.gz", "img_005.nii.gz"]
    # never among the second source's data
    inside = target / "predictions"
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "predict",
                *common,
                "--ckpt_path",
                "last",
                "--prediction_writer.output_dir",
                str(inside),
            ]
        )
    assert (
        f"prediction_writer.output_dir {inside} lies in the unlabeled source's folder "
        f"(data.unlabeled_*) {target}" in str(stop.value.code)
    )
    assert not inside.exists()


def test_a_run_with_the_unlabeled_source_killed_with_sigkill_resumes_bitwise(tmp_path, target):
    iterations = "12"
    settings = ["--model.max_iterations", iterations, "--trainer.limit_val_batches", "0"]
    main(["fit", *words(tmp_path, "straight", target, *settings)])
    straight = tmp_path / "straight" / "checkpoints" / "last.ckpt"

    advmim = Path(sys.executable).with_name("advmim")
    command = [
        str(advmim),
        "fit",
        *words(tmp_path, "killed", target, *settings, "--checkpoint_every", "2"),
    ]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    sigkill_once_checkpointed(command, last)
    killed_at = int(torch.load(last, weights_only=True)["state_dict"]["iteration"])
    assert 2 <= killed_at < int(iterations)

    main(["fit", *words(tmp_path, "killed", target, *settings, "--ckpt_path", "last")])
    resumed = torch.load(last, weights_only=True)
    reference = torch.load(straight, weights_only=True)
    assert resumed["state_dict"]["iteration"] == reference["state_dict"]["iteration"] == 12
    assert_same_training_state(resumed, reference)


def test_a_two_process_ddp_fit_and_test_with_the_unlabeled_source(tmp_path, target):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    advmim = str(Path(sys.executable).with_name("advmim"))
    ddp = ["--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2"]
    common = words(tmp_path, "ddp", target, "--model.max_iterations", "3", *ddp)
    for stage in (["fit", "--trainer.val_check_interval", "3"], ["test", "--ckpt_path", "last"]):
        done = subprocess.run(
            [advmim, stage[0], *common, *stage[1:]],
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "ddp"
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["state_dict"]["iteration"] == 3
    with (run / "test_metrics.csv").open(newline="") as handle:
        cases = [row["case_id"] for row in csv.DictReader(handle)]
    assert cases == ["img_003", "img_005", "mean"]  # the two ranks' target cases, gathered
