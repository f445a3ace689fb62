"""``RunCheckpoint``: the run's checkpoints, ``last.ckpt`` kept current, every file atomic."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl

from advmim_lightning.run.folders import REQUEUE_CHECKPOINTS
from advmim_lightning.run.lightning_private import _CheckpointFileHooks


class RunCheckpoint(_CheckpointFileHooks):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` current and writes every file atomically.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was written at the same
    step, so a run whose score stops improving would resume from an old state. This callback
    also writes ``last.ckpt`` after every validation and when training ends (the module stops
    itself after ``max_iterations``), which is what ``--ckpt_path last`` resumes from.
    Each file is written under a temporary name and renamed into place, so a kill during saving
    never leaves a truncated checkpoint behind.

    Args:
        every_n_iterations: Also refresh ``last.ckpt`` after every this many training
            iterations (the module's :attr:`~advmim_lightning.AdvMIMModule.iteration`, not
            optimiser steps). ``0``: only after validation and at the end of training.
        **kwargs: ``ModelCheckpoint`` arguments (``dirpath``, ``monitor``, ``save_last``, ...).

    Raises:
        ValueError: If ``every_n_iterations < 0``.
    """

    def __init__(self, *args: Any, every_n_iterations: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if every_n_iterations < 0:
            raise ValueError(f"every_n_iterations must be >= 0, got {every_n_iterations}")
        self.every_n_iterations = every_n_iterations
        self._last_refreshed_step = -1
        #: The module's iteration when this process last wrote ``last.ckpt`` (None: not yet).
        self.last_saved_iteration: int | None = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        iteration = getattr(pl_module, "iteration", trainer.global_step)
        if self.every_n_iterations and iteration % self.every_n_iterations == 0:
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            # Lightning 2.6 saves last.ckpt here even under fast_dev_run, which is meant to
            # save nothing: a smoke test would leave a 1-step "run" for --ckpt_path last
            return
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def last_checkpoint_files(self, trainer: pl.Trainer) -> set[str]:
        """``last*.ckpt`` and the SLURM requeue checkpoints: ``--ckpt_path last`` takes the newest.

        On SLURM, Lightning answers the preemption signal (``#SBATCH --signal=SIGUSR1@...``) by
        saving ``hpc_ckpt_<n>.ckpt`` in the run folder and requeueing the job; counting those
        files here makes a requeued ``--ckpt_path last`` resume from the newest state.
        """
        found = super().last_checkpoint_files(trainer)
        folder = Path(trainer.default_root_dir)
        return found | {os.path.normpath(p) for p in folder.glob(REQUEUE_CHECKPOINTS)}

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        step = trainer.global_step
        if trainer.state.fn != "fit" or step in (self.last_step_saved, self._last_refreshed_step):
            return
        saved_step = self.last_step_saved
        self.save_last_checkpoint_now(trainer)
        # Refreshing last.ckpt alone must not count as "saved at this step": ModelCheckpoint
        # would then skip the top-k (best) checkpoint of a validation at the same step, and
        # with --checkpoint_every dividing val_check_interval no best-*.ckpt would ever appear.
        self.last_step_saved = saved_step
        self._last_refreshed_step = step

    def write_checkpoint_file(self, trainer: pl.Trainer, filepath: str) -> None:
        # Non-finite losses are checked on logging iterations; check the iterations since the
        # last one now, so a run that went NaN raises instead of overwriting last.ckpt.
        check_nonfinite_now = getattr(trainer.lightning_module, "check_nonfinite_now", None)
        if callable(check_nonfinite_now) and trainer.state.fn == "fit":
            check_nonfinite_now()
        tmp = f"{filepath}.tmp"
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
        except BaseException as err:
            if trainer.is_global_zero:
                Path(tmp).unlink(missing_ok=True)  # the file in place is the previous one
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(_no_space_message(trainer, Path(filepath), err)) from err
            raise
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self.record_saved_checkpoint(trainer, filepath)
        if Path(filepath).name == "last.ckpt":
            module = trainer.lightning_module
            self.last_saved_iteration = getattr(module, "iteration", trainer.global_step)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def _no_space_message(trainer: pl.Trainer, filepath: Path, err: OSError) -> str:
    """One line for a checkpoint the disk had no room for: the folder, the space needed (the
    size of a checkpoint already in the folder, else at least the model's weights) and what
    was kept."""
    folder = filepath.parent
    others = [p for p in folder.glob("*.ckpt") if p.is_file()]
    if others:
        needed = f"about {_megabytes(max(p.stat().st_size for p in others))}"
    else:
        weights = trainer.lightning_module.state_dict().values()
        size = sum(t.numel() * t.element_size() for t in weights if hasattr(t, "element_size"))
        needed = f"at least {_megabytes(size)}"
    try:
        free = f", {_megabytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = ""
    reason = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on the disk"
    kept = (
        f"the previous {filepath.name} is kept: free space, then resume with --ckpt_path last"
        if filepath.is_file()
        else f"no {filepath.name} was written"
    )
    return (
        f"{reason} in {folder} while saving the checkpoint {filepath.name} ({needed} "
        f"needed{free}); {kept}"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
