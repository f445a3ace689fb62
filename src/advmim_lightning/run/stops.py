"""What a command stopped from outside says: ``SIGTERM`` (exit status 143) and a run folder
removed while it ran, each in one line naming what holds the run's state."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from advmim_lightning.run.folders import REQUEUE_CHECKPOINTS
from advmim_lightning.run.run_checkpoint import RunCheckpoint

__all__ = ["RunStopped", "removed_report", "stopped_report"]


class RunStopped(SystemExit):
    """A command stopped by ``SIGTERM`` before its end: exit status 143 (128 + 15), as shells
    report a process ended by that signal, so ``advmim fit && advmim test`` or a scheduler does
    not take the partial run for a finished one.

    Lightning answers ``SIGTERM`` by raising its ``SIGTERMException``, a ``SystemExit`` whose
    status is 0; :class:`AdvMIMCLI` replaces it by this.

    Attributes:
        report: One line: what stopped, and where the run's state is (what resumes it).
    """

    def __init__(self, report: str) -> None:
        super().__init__(128 + signal.SIGTERM)
        self.report = report


def removed_report(path: Path, at: str) -> str:
    """The run folder ``path`` was deleted while the command ran (``at``: `` at iteration n``)."""
    return (
        f"the run folder {path} was removed during the run{at}: the checkpoints, config and "
        "logs written before went with it; start the run again (and keep its folder until "
        "the command ends)"
    )


def stopped_report(subcommand: str, trainer: Any, started: float, at: str) -> str:
    """What a ``SIGTERM`` stopped, and what holds the run's state now (one line).

    On SLURM with ``--signal=SIGUSR1@...``, Lightning answered the requeue signal first by
    saving ``hpc_ckpt_<n>.ckpt`` in the run folder and asking SLURM to requeue the job; the
    ``SIGTERM`` that follows is SLURM stopping this copy of the job. Any other ``SIGTERM``
    (``scancel``, ``kill``, a time limit without the requeue signal) leaves
    ``checkpoints/last.ckpt`` as the run's state.

    Args:
        subcommand: The command stopped.
        trainer: Its trainer, or None before one was built.
        started: When the command started (``time.time()``): older requeue files are not its.
        at: `` at iteration <n>``, or empty.
    """
    if subcommand != "fit":
        return (
            f"advmim {subcommand} was stopped by SIGTERM before its end; its results are "
            "incomplete: run it again"
        )
    if trainer is None:
        return f"advmim fit was stopped by SIGTERM{at}, before its end"
    root = Path(trainer.default_root_dir)
    requeue = [p for p in root.glob(REQUEUE_CHECKPOINTS) if p.stat().st_mtime >= started]
    if requeue:
        newest = max(requeue, key=lambda p: p.stat().st_mtime)
        return (
            f"advmim fit was stopped by SIGTERM{at} after SLURM's requeue signal: {newest} "
            "holds the run's state, and the requeued job resumes from it with --ckpt_path "
            "last (the run is not finished)"
        )
    saved = [c for c in trainer.callbacks if isinstance(c, RunCheckpoint)]
    last = Path(saved[0].dirpath) / "last.ckpt" if saved and saved[0].dirpath else None
    if last is not None and last.is_file():
        held = saved[0].last_saved_iteration
        state = f"{last} (iteration {held})" if held is not None else str(last)
        where = f"{state} holds the run's state: resume it with --ckpt_path last"
    else:
        where = "no checkpoint was saved yet: the run starts again from iteration 0"
    return f"advmim fit was stopped by SIGTERM{at}, before its end; {where}"
