"""A full disk or a removed run folder during ``advmim fit`` ends in one line, not a traceback,
and never costs the previous checkpoint (docs/reliability.md)."""

from __future__ import annotations

import errno
import shutil
import sys
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.io import torch_io

from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
QUICKSTART = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY]


def fit_words(runs: Path, *extra: str) -> list[str]:
    words = [*QUICKSTART, "--trainer.limit_val_batches", "0", "--runs_dir", runs]
    return ["fit", *(str(w) for w in words), "--run_name", "r", "--wandb_mode", "disabled", *extra]


def test_a_full_disk_while_saving_keeps_last_ckpt_and_says_so_in_one_line(tmp_path, monkeypatch):
    real_save = torch_io._atomic_save
    saves = []

    def save_then_fill_the_disk(checkpoint, path):
        saves.append(path)
        if len(saves) <= 2:
            return real_save(checkpoint, path)
        Path(path).write_bytes(b"partial")  # what a write that ran out of space leaves
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch_io, "_atomic_save", save_then_fill_the_disk)
    message = cli_error(
        *fit_words(tmp_path, "--model.max_iterations", "5", "--checkpoint_every", "1")
    )
    folder = tmp_path / "r" / "checkpoints"
    last = folder / "last.ckpt"
    assert "\n" not in message.split("\n(set ADVMIM_DEBUG")[0], message
    assert f"no space left on the disk in {folder} while saving the checkpoint last.ckpt" in message
    size = last.stat().st_size / 2**20
    assert f"(about {size:.1f} MB needed, " in message and " MB free)" in message, message
    assert (
        "the previous last.ckpt is kept: free space, then resume with --ckpt_path last" in message
    )
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no .tmp left


class RemoveRunFolderAt(pl.Callback):
    """Remove the run folder (``trainer.default_root_dir``) after training iteration ``at``."""

    def __init__(self, at: int = 1) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.iteration == self.at:
            shutil.rmtree(trainer.default_root_dir)


@pytest.fixture
def remover(monkeypatch) -> str:
    """The class path of :class:`RemoveRunFolderAt`, importable by the CLI's parser."""
    module = types.ModuleType("advmim_remover_test")
    module.RemoveRunFolderAt = RemoveRunFolderAt
    monkeypatch.setitem(sys.modules, "advmim_remover_test", module)
    return "advmim_remover_test.RemoveRunFolderAt"


@pytest.mark.parametrize("every", ["0", "1"])  # 0: the next write fails; 1: a save remakes it
def test_a_run_folder_removed_during_fit_is_reported_in_one_line(tmp_path, remover, every):
    callback = ["--trainer.callbacks+", remover, "--trainer.callbacks.at", "1"]
    words = fit_words(tmp_path, "--model.max_iterations", "3", "--checkpoint_every", every)
    message = cli_error(*words, *callback)
    run_dir = tmp_path / "r"
    assert f"the run folder {run_dir} was removed during the run" in message, message
    assert "\n" not in message.split("\n(set ADVMIM_DEBUG")[0], message
    # --checkpoint_every 1: the next save made the folder again, without config.yaml and
    # the lock (so the run ends with the same error instead of exit status 0)
    assert not (run_dir / "config.yaml").exists()
