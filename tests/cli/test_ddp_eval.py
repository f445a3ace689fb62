"""``advmim test`` and ``advmim predict`` under a 2-process CPU (gloo) DDP run, through the CLI.

One tiny run is trained in-process; its checkpoint is then tested and predicted with one
process (in-process) and with two DDP processes (the console script in a subprocess, one launch
per subcommand). The phantom split has 3 test cases, so the evaluation sampler pads rank 1 with a
repeat of case 0: the metrics must still count every case exactly once and equal the
single-process numbers, and prediction must write each case's file once, with the same labels.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from advmim_lightning.run.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
# 6 phantom cases: test_fraction 0.5 -> 3 test cases (odd: one DDP shard is padded), then 1
# validation case, 1 labeled and 1 unlabeled training case. Two iterations leave the CNN
# predicting one class everywhere, which would make the comparison trivial, so the fixture
# centres the CNN's output bias on the test images: the argmax then varies across pixels.
# Given to the fit only: test and predict take the model's settings from the checkpoint.
DATA = ["--data.settings.test_fraction", "0.5", "--data.labeled_cases", "1"]
MODEL = ["--model.eval_network", "cnn"]
TEST_CASES = 3


def _base(runs_dir: Path, run_name: str) -> list[str]:
    return [
        "-c", str(ROOT / "configs/quickstart.yaml"), "-c", str(TINY), *DATA,
        "--runs_dir", str(runs_dir), "--run_name", run_name, "--wandb_mode", "disabled",
    ]  # fmt: skip


def _ddp(words: list[str]) -> None:
    """Run ``advmim <words>`` with 2 gloo processes; fail with the end of its stderr."""
    advmim = Path(sys.executable).with_name("advmim")
    command = [str(advmim), *words, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _test_table(run_dir: Path) -> dict[str, list[float]]:
    """``test_metrics.csv`` as ``{case_id or "mean": values}``; fails on a repeated row."""
    rows = list(csv.reader((run_dir / "test_metrics.csv").open()))
    names = [row[0] for row in rows[1:]]
    assert len(names) == len(set(names)), f"a case is listed twice: {names}"
    return {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}


def _logged(run_dir: Path, key: str) -> float:
    values = [r[key] for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get(key)]
    assert len(values) == 1, f"{key} logged {len(values)} times in {run_dir / 'metrics.csv'}"
    return float(values[0])


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.name.removesuffix(".nii.gz"): np.asarray(nib.load(p).dataobj)
        for p in sorted(folder.glob("*.nii.gz"))
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-iteration run's ``last.ckpt`` (single process, no validation)."""
    runs = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    words = [
        "fit", *_base(runs, "fit"), *MODEL, "--model.max_iterations", "2",
        "--trainer.limit_val_batches", "0",
    ]  # fmt: skip
    main(words)
    path = runs / "fit" / "checkpoints" / "last.ckpt"
    assert path.is_file()
    _centre_cnn_output(path)
    return path


def _centre_cnn_output(path: Path) -> None:
    """Shift the CNN head's bias by minus its mean logit per class on the test images."""
    from advmim_lightning import AdvMIMDataModule, AdvMIMModule
    from advmim_lightning.data import PhantomSettings, SourceSettings

    data = AdvMIMDataModule(
        layout="phantom", image_size=(64, 64), phantom=PhantomSettings(cases=6, slices=3, size=64),
        settings=SourceSettings(test_fraction=0.5), labeled_cases=1, num_workers=0,
    )  # fmt: skip
    data.setup("test")
    images = torch.cat([item["image"].movedim(1, 0) for item in data.test_dataset])
    module = AdvMIMModule.load_from_checkpoint(path).eval()
    with torch.no_grad():
        mean_logits = module.cnn(images).mean((0, 2, 3))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["cnn.head.bias"] -= mean_logits
    torch.save(checkpoint, path)


def test_ddp_test_metrics_equal_one_process_with_every_case_once(checkpoint, tmp_path):
    for run_name, launch in (("single", main), ("ddp", _ddp)):
        launch(["test", *_base(tmp_path, run_name), "--ckpt_path", str(checkpoint)])

    single, ddp = _test_table(tmp_path / "single"), _test_table(tmp_path / "ddp")
    assert len(single) == TEST_CASES + 1 and single.keys() == ddp.keys()
    assert list(single)[-1] == "mean"
    for case, values in single.items():
        assert ddp[case] == pytest.approx(values, abs=1e-6), case
    # the mean row is the mean over the 3 distinct cases, not over the 4 padded evaluations
    per_case = np.array([v for k, v in ddp.items() if k != "mean"])
    assert ddp["mean"] == pytest.approx(per_case.mean(0).tolist(), rel=1e-5, abs=1e-6)
    assert _logged(tmp_path / "single", "test/dice_mean") > 0.01  # not an all-background model
    for key in ("test/dice_mean", "test/hd95_mean", "test/nsd_mean"):
        assert _logged(tmp_path / "ddp", key) == pytest.approx(
            _logged(tmp_path / "single", key), abs=1e-6
        )


def test_ddp_predict_writes_each_case_once_like_one_process(checkpoint, tmp_path):
    single_dir, ddp_dir = tmp_path / "single_pred", tmp_path / "ddp_pred"
    for run_name, out_dir, launch in (("single", single_dir, main), ("ddp", ddp_dir, _ddp)):
        words = [
            "predict", *_base(tmp_path, run_name), "--ckpt_path", str(checkpoint),
            "--prediction_writer.output_dir", str(out_dir),
        ]  # fmt: skip
        launch(words)

    single, ddp = _labels(single_dir), _labels(ddp_dir)
    assert len(ddp) == TEST_CASES and ddp.keys() == single.keys(), sorted(ddp)
    # one file per case and no temporary file left behind (the padded repeat wrote case 0 twice)
    assert sorted(p.name for p in ddp_dir.iterdir()) == [f"{c}.nii.gz" for c in sorted(ddp)]
    assert all(np.unique(labels).size >= 2 for labels in single.values())  # not one class
    for case, labels in single.items():
        np.testing.assert_array_equal(ddp[case], labels, err_msg=case)


def test_two_writers_of_the_same_case_at_once_leave_one_complete_file(tmp_path, monkeypatch):
    """The padded repeat of a case can be written by two ranks at the same moment.

    The second writer runs start to end while the first is between saving and renaming its
    temporary file; a shared temporary name made the first writer's rename fail.
    """
    from advmim_lightning.evaluation.prediction_writer import PredictionWriter

    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 4
    prediction = {"case_id": "case0", "prediction": labels, "affine": None}
    first, second = PredictionWriter(str(tmp_path)), PredictionWriter(str(tmp_path))
    for writer in (first, second):  # as each rank's setup does, before any rank writes
        writer.plan(["case0"], "nifti")
    save, calls = nib.save, []

    def save_then_let_the_other_rank_write(image, filename):
        save(image, filename)
        calls.append(filename)
        if len(calls) == 1:
            second.write(prediction, "nifti")

    monkeypatch.setattr(nib, "save", save_then_let_the_other_rank_write)
    assert first.write(prediction, "nifti") == tmp_path / "case0.nii.gz"
    assert len(calls) == 2 and calls[0] != calls[1]
    assert [p.name for p in tmp_path.iterdir()] == ["case0.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "case0.nii.gz").dataobj), labels)
