"""``advmim export``: a segmenter as a plain file that loads (and runs) without Lightning."""

from __future__ import annotations

from pathlib import Path

import torch

from advmim_lightning.run.main import main
from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/cli/tiny.yaml")


def run(*words: object) -> None:
    main([str(w) for w in words])


def test_export_round_trips_without_lightning(tmp_path):
    from advmim_lightning.commands.export import load_segmenter

    base = [
        "-c",
        ROOT / "configs/quickstart.yaml",
        "-c",
        TINY,
        "--runs_dir",
        tmp_path / "runs",
        "--run_name",
        "ex",
        "--wandb_mode",
        "disabled",
    ]
    run("fit", *base, "--model.max_iterations", "1", "--trainer.limit_val_batches", "0")
    ckpt = tmp_path / "runs" / "ex" / "checkpoints" / "last.ckpt"
    for network in ("transformer", "cnn"):
        out = tmp_path / f"{network}.pt"
        run("export", ckpt, out, "--network", network, "--torch_export")
        program = torch.export.load(out.with_suffix(".pt2")).module()
        net = load_segmenter(out)
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        for key, value in net.state_dict().items():
            assert torch.equal(value, state[f"{network}.{key}"])
        x = torch.rand(1, 1, 64, 64)
        assert net(x).shape == (1, 4, 64, 64)
        assert torch.allclose(program(x), net(x), atol=1e-5)


def test_export_reports_a_missing_checkpoint(tmp_path):
    message = cli_error("export", tmp_path / "nope.ckpt", tmp_path / "out.pt")
    assert "nope.ckpt does not exist" in message
