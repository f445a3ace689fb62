"""How ``advmim`` ends on signals (docs/cli.md, docs/scale-out.md): ``SIGTERM`` during a
command exits with status 143 and leaves ``last.ckpt`` resumable; on SLURM, the requeue signal
(``SIGUSR1``) saves ``hpc_ckpt_<n>.ckpt`` and requeues the job before SLURM's ``SIGTERM``."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from advmim_lightning.run.main import main
from advmim_lightning.run.resume import find_run_checkpoint
from tiny import pretend_slurm

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
QUICKSTART = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY]
SHORT = ["--trainer.limit_val_batches", "0"]


class SignalAt(pl.Callback):
    """Send this process the given signals after training iteration ``at``."""

    def __init__(self, at: int = 2, signals: str = "SIGTERM") -> None:
        self.at = at
        self.signals = signals.split(",")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.iteration == self.at:
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))
                time.sleep(0.05)  # the handler runs in the main thread, between bytecodes


@pytest.fixture
def signal_callback(monkeypatch) -> str:
    """The class path of :class:`SignalAt`, importable by the CLI's parser."""
    module = types.ModuleType("advmim_signal_test")
    module.SignalAt = SignalAt
    monkeypatch.setitem(sys.modules, "advmim_signal_test", module)
    return "advmim_signal_test.SignalAt"


def fit_words(runs: Path, *extra: str) -> list[str]:
    words = [*QUICKSTART, *SHORT, "--runs_dir", runs, "--run_name", "r", "--wandb_mode", "disabled"]
    return ["fit", *(str(w) for w in words), *extra]


def stopped(words: list[str], capsys) -> str:
    """Run ``advmim`` expecting exit status 143; return what it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 143, exit_info.value.code
    return capsys.readouterr().err


def test_sigterm_during_fit_exits_143_and_last_ckpt_resumes(tmp_path, signal_callback, capsys):
    callback = ["--trainer.callbacks+", signal_callback, "--trainer.callbacks.at", "2"]
    every = ["--checkpoint_every", "1"]
    err = stopped(fit_words(tmp_path, "--model.max_iterations", "50", *every, *callback), capsys)
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert (
        f"advmim: advmim fit was stopped by SIGTERM at iteration 2, before its end; {last} " in err
    )
    assert "(iteration 2) holds the run's state: resume it with --ckpt_path last" in err
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 2
    assert not list(last.parent.glob("*.tmp")) and not (tmp_path / "r" / ".advmim.lock").read_text()
    main(fit_words(tmp_path, "--model.max_iterations", "3", "--ckpt_path", "last"))
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] == 3


def test_sigterm_from_outside_gives_the_shell_status_143(tmp_path):
    words = fit_words(tmp_path, "--model.max_iterations", "100000", "--checkpoint_every", "1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "advmim_lightning", *words],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "advmim fit was stopped by SIGTERM" in err and "--ckpt_path last" in err
    assert torch.load(last, weights_only=True)["state_dict"]["iteration"] >= 1


def test_slurm_requeue_signal_then_sigterm_saves_hpc_ckpt_and_requeues(
    tmp_path, signal_callback, capsys, monkeypatch
):
    pretend_slurm(monkeypatch)
    bin_dir = tmp_path / "bin"  # a scontrol that records how it was called
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    callback = [
        "--trainer.callbacks+", signal_callback, "--trainer.callbacks.at", "2",
        "--trainer.callbacks.signals", "SIGUSR1,SIGTERM",
    ]  # fmt: skip
    err = stopped(fit_words(runs, "--model.max_iterations", "50", *callback), capsys)
    hpc = runs / "r" / "hpc_ckpt_1.ckpt"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert hpc.is_file() and torch.load(hpc, weights_only=True)["state_dict"]["iteration"] == 2
    assert f"stopped by SIGTERM at iteration 2 after SLURM's requeue signal: {hpc}" in err
    assert "the requeued job resumes from it with --ckpt_path last" in err
    assert not (runs / "r" / "checkpoints" / "last.ckpt").exists()  # no --checkpoint_every
    assert find_run_checkpoint("fit", "last", runs, "r") == hpc
