"""Determinism: seed_everything + Trainer(deterministic=True) repeat a run's loss curve exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from advmim_lightning.run.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))


@pytest.fixture
def restore_deterministic_mode():
    # Lightning switches torch's process-wide deterministic mode on and leaves it on
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def loss_curve(tmp_path: Path, name: str, *extra: str) -> list[dict[str, str]]:
    main(
        [
            "fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
            "--runs_dir", str(tmp_path), "--run_name", name, "--wandb_mode", "disabled",
            "--seed_everything", "7", "--trainer.deterministic", "true",
            "--model.max_iterations", "4", "--trainer.limit_val_batches", "0",
            "--trainer.enable_checkpointing", "false", *extra,
        ]
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / name / "metrics.csv").open()))
    return [{k: v for k, v in r.items() if k.startswith("train/") and v} for r in rows]


def test_two_deterministic_runs_log_identical_loss_curves(tmp_path, restore_deterministic_mode):
    first = loss_curve(tmp_path, "first")
    assert torch.are_deterministic_algorithms_enabled()
    second = loss_curve(tmp_path, "second")
    assert len(first) == 4 and {"train/loss", "train/adv_cnn", "train/disc_cnn"} <= set(first[0])
    assert first == second  # every term at every iteration, as written (full precision)
    other_seed = loss_curve(tmp_path, "other", "--model.rng_seed", "1")
    assert [r["train/loss"] for r in other_seed] != [r["train/loss"] for r in first]
