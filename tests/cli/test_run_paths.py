"""Where a run writes: ``~`` in path settings is expanded once, and ``--run_name`` names one
folder inside ``--runs_dir`` (docs/cli.md, docs/refusals.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advmim_lightning.run.cli import build_cli
from advmim_lightning.run.main import main
from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
QUICKSTART = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """``$HOME`` is a fresh folder and the working directory another one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_a_runs_dir_under_home_keeps_the_whole_run_in_one_folder(home, tmp_path):
    words = [*QUICKSTART, "--runs_dir", "~/runs", "--run_name", "r", "--wandb_mode", "disabled"]
    main(["fit", *words, "--model.max_iterations", "2", "--trainer.val_check_interval", "2"])
    run_dir = home / "runs" / "r"
    assert (run_dir / ".advmim.lock").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "panels").glob("*.png"))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert not list(tmp_path.rglob("~")), "a literal ~ folder was made"
    # ~ in --ckpt_path and in the prediction folder too
    ckpt = "~/runs/r/checkpoints/last.ckpt"
    main(["validate", *words, "--ckpt_path", ckpt])
    main(["predict", *words, "--ckpt_path", ckpt, "--prediction_writer.output_dir", "~/preds"])
    assert (run_dir / "validate_config.yaml").is_file()
    assert list((home / "preds").iterdir())
    assert not list(tmp_path.rglob("~")), "a literal ~ folder was made"


def test_a_runs_dir_under_home_in_a_config_file_is_expanded(home, tmp_path):
    config = tmp_path / "runs.yaml"
    config.write_text(
        "runs_dir: ~/runs\ntrainer:\n  default_root_dir: ~/elsewhere\n"
        "data:\n  settings:\n    cache_dir: ~/c\n"
    )
    cli = build_cli([*QUICKSTART, "-c", str(config), "--wandb_mode", "disabled"], run=False)
    assert cli.config["runs_dir"] == str(home / "runs")
    assert cli.config["trainer"]["default_root_dir"] == str(home / "elsewhere")
    assert cli.config["data"]["settings"]["cache_dir"] == str(home / "c")


@pytest.mark.parametrize("name", ["../x", "", ".", "..", "a/b"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path, name):
    runs = tmp_path / "runs"
    short = ["--model.max_iterations", "1", "--trainer.limit_val_batches", "0"]
    message = cli_error(
        "fit",
        *QUICKSTART,
        *short,
        "--runs_dir",
        runs,
        "--run_name",
        name,
        "--wandb_mode",
        "disabled",
    )
    assert f"--run_name {name!r} is not a run name" in message, message
    assert "one folder inside --runs_dir" in message and "without '/'" in message
    assert not tmp_path.joinpath("x").exists() and not runs.exists()
