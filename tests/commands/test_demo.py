"""``make demo`` (``python -m advmim_lightning.commands.demo``) on the tiny phantom."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/cli/tiny.yaml")


def test_demo_trains_tests_predicts_and_draws_the_overlay(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from advmim_lightning.commands.demo import main as demo
    from advmim_lightning.evaluation.overlays import CLASS_COLOURS

    configs = ["--config", str(ROOT / "configs/quickstart.yaml"), "--config", TINY]
    overrides = tmp_path / "short.yaml"
    overrides.write_text("model:\n  max_iterations: 2\ntrainer:\n  val_check_interval: 2\n")
    runs = ["--runs_dir", str(tmp_path / "runs")]
    threads_before = torch.get_num_threads()
    demo([*configs, "--config", str(overrides), *runs, "--threads", str(threads_before + 1)])
    assert torch.get_num_threads() == threads_before  # restored after the demo
    run_dir = tmp_path / "runs" / "quickstart"

    # image | ground truth | CNN | transformer, twice the slice size, titles above, legend below
    overlay = np.asarray(Image.open(run_dir / "overlay.png").convert("RGB"))
    tiles_height = 2 * 64  # the tiny phantom has one test case
    assert overlay.shape[1] == 2 * (4 * 64 + 3 * 2)
    assert overlay.shape[0] > tiles_height + 2 * 20
    header = overlay[:20]
    for column in range(4):
        left = column * 2 * (64 + 2)
        assert (header[:, left : left + 128] < 100).any(), f"no title above column {column}"
    legend = overlay[20 + tiles_height :]
    for colour in CLASS_COLOURS[:3].astype(np.uint8):  # RV, Myo, LV swatches
        assert (legend == colour).all(axis=-1).sum() > 50
    printed = capsys.readouterr()
    assert "=== advmim demo finished ===" in printed.out
    assert str(run_dir / "checkpoints" / "last.ckpt") in printed.out
    assert "final validation Dice: cnn " in printed.out and ", transformer " in printed.out
    assert "test (cnn), mean over cases: dice_mean=" in printed.out
    assert f"CPU threads         : {threads_before + 1} (--threads)" in printed.out
    assert "LeafSpec" not in printed.err and "args parameter is intended" not in printed.err

    # the overlay alone, from the finished run, to another file (how docs/ gets its copy)
    target = tmp_path / "docs" / "overlay.png"
    demo([*configs, *runs, "--overlay_only", "--overlay", str(target)])
    assert np.array_equal(np.asarray(Image.open(target).convert("RGB")), overlay)
