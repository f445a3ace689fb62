"""A real 2-process DDP fit on the CPU (gloo) through the console script."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")


def test_two_process_ddp_fit_writes_one_run_folder(tmp_path):
    advmim = Path(sys.executable).with_name("advmim")
    command = [
        str(advmim), "fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", str(TINY),
        "--runs_dir", str(tmp_path), "--run_name", "ddp", "--wandb_mode", "disabled",
        "--model.max_iterations", "3", "--trainer.val_check_interval", "3",
        "--trainer.devices", "2", "--trainer.strategy", "ddp_find_unused_parameters_true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["advmim"]["iteration"] == 3
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(r.get("val/dice_mean") for r in rows)
    assert len([r for r in rows if r.get("train/loss")]) == 3  # rank 0 logs, once per iteration


def test_skip_mode_skips_an_iteration_on_every_rank_when_one_rank_overflows(tmp_path):
    script = Path(__file__).with_name("ddp_skip_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for states in ranks:
        assert int(states["skipped"]) == 1
        for key, value in states["before1"].items():  # iteration 1 changed nothing
            assert torch.equal(states["after1"][key], value), key
        assert not torch.equal(
            states["after2"]["cnn.head.weight"], states["before2"]["cnn.head.weight"]
        )
    # parameters and momenta stay identical across ranks (batch-norm running statistics are
    # per rank under DDP: each rank's masks differ)
    for key, value in ranks[0]["after2"].items():
        if "running_" not in key and "num_batches_tracked" not in key:
            assert torch.equal(ranks[1]["after2"][key], value), key
