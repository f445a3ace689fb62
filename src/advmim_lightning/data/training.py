"""The training stream of the data module: its loader, its sampler and where it is.

:class:`TrainingStream` is the part of :class:`~advmim_lightning.data.AdvMIMDataModule` that
turns the labeled and unlabeled slice datasets into one paired batch per iteration
(``train_dataloader``) and counts iterations for exact resuming (``start_iteration``,
``next_iteration``, ``data_position``, ``state_dict``/``load_state_dict``).
:class:`TrainingLoader` is the training DataLoader that starts every iterator there.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from advmim_lightning.data.datasets import (
    ITERATION_KEY,
    LABELED_STREAM,
    UNLABELED_STREAM,
    PairedTrainingDataset,
    SliceDataset,
    collate_training_batch,
)
from advmim_lightning.data.sampling import IterationSampler, StreamSpec

__all__ = ["TrainingLoader", "TrainingStream", "check_resume_world_size"]

_STATE_VERSION = 1


def check_resume_world_size(saved: int | None, current: int) -> None:
    """Refuses to resume training with another number of processes than the saved run's.

    Iteration ``it`` of rank ``r`` reads global sample positions ``(it * w + r) * B + j``, so
    the positions a run has consumed depend on its world size ``w``: continuing a run saved
    with ``w`` processes with another count would read some samples a second time (fewer
    processes) or never read others (more processes).

    Args:
        saved: World size stored in the checkpoint (None for checkpoints that lack it).
        current: World size of this run (``num_nodes x devices``).

    Raises:
        ValueError: If ``saved`` is known and differs from ``current``.
    """
    if saved is None or int(saved) == current:
        return
    raise ValueError(
        f"the checkpoint was saved by a run with {saved} process(es) and this run has {current} "
        f"(world size = trainer.num_nodes x trainer.devices): batches are keyed by iteration, "
        f"rank and world size, so resuming would repeat or skip training samples; resume with "
        f"{saved} processes (e.g. --trainer.num_nodes 1 --trainer.devices {saved}), or start a "
        "new run without --ckpt_path."
    )


class TrainingLoader(DataLoader):
    """The training DataLoader. Inside a Trainer every iterator starts at
    :meth:`TrainingStream.data_position`, whatever epoch Lightning counts. It keeps no state
    of its own (an empty ``state_dict`` tells Lightning that resuming mid-epoch is exact):
    the position is never stored twice.
    """

    def __init__(self, *args: Any, datamodule: TrainingStream, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._datamodule = datamodule

    def __iter__(self) -> Any:
        sampler = self.sampler
        # Lightning may have replaced the sampler (overfit_batches): then items are indices.
        # Outside a Trainer the sampler's own set_epoch / start_iteration decide.
        if isinstance(sampler, IterationSampler) and self._datamodule.trainer is not None:
            position = self._datamodule.data_position()
            sampler.set_start_iteration(position)
            sampler.set_epoch(position // sampler.iterations_per_epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Nothing to restore (an older checkpoint's ``next_iteration`` is not used)."""


class TrainingStream(pl.LightningDataModule):
    """A LightningDataModule whose training loader gives one paired batch per iteration.

    **Sampling** is indexed by iteration: iteration ``it`` on rank ``r`` of ``w`` reads global
    sample positions ``(it * w + r) * B + j`` of each stream; position ``g`` reads item
    ``perm[g % N]`` of a permutation seeded by ``(seed, stream, g // N)``. Augmentation is keyed
    by ``(seed, stream, g)``. Batches therefore depend only on ``(seed, iteration, rank, world
    size)``: identical with any ``num_workers``, never duplicated across DDP ranks within a pass,
    and exactly reproducible after a resume.

    **Resuming**: every training iterator starts at :meth:`data_position`, the trained
    LightningModule's ``iteration`` count when it keeps one (``AdvMIMModule`` does, and
    stores it with its weights), so any checkpoint resumes exactly; the data module then
    stores no position of its own, so no two counts can disagree. For other LightningModules,
    which keep no count, :meth:`state_dict` stores the next iteration (restored with
    ``ckpt_path``), and :meth:`set_start_iteration` before the epoch starts sets it.
    Lightning's ``overfit_batches`` replaces the sampler: the training
    set then reads integer index ``i`` as iteration ``i``. :meth:`on_before_batch_transfer`
    reads (and removes) the ``"iteration"`` entry of each training batch; batches read from the
    loader outside a Trainer still carry it.

    Subclasses set the attributes below and implement ``_setup_training`` (which fills
    ``labeled_dataset`` and ``unlabeled_dataset``).
    """

    seed: int
    labeled_batch_size: int
    unlabeled_batch_size: int
    iterations_per_epoch: int | None
    num_workers: int
    pin_memory: bool | None
    persistent_workers: bool
    labeled_dataset: SliceDataset | None
    unlabeled_dataset: SliceDataset | None

    def __init__(self) -> None:
        super().__init__()
        self._start_iteration = 0
        self._last_trained_iteration: int | None = None
        self._train_sampler: IterationSampler | None = None

    def _setup_training(self) -> None:
        raise NotImplementedError

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def resolved_iterations_per_epoch(self, world_size: int = 1) -> int:
        """Iterations per epoch for ``world_size`` ranks (see :class:`TrainingStream`).

        Raises:
            RuntimeError: Before ``setup("fit")`` when ``iterations_per_epoch`` is None.
        """
        if self.iterations_per_epoch is not None:
            return self.iterations_per_epoch
        if self.labeled_dataset is None:
            raise RuntimeError("call setup('fit') before asking for the default epoch length")
        if self.unlabeled_dataset is not None:
            return math.ceil(len(self.unlabeled_dataset) / (self.unlabeled_batch_size * world_size))
        return math.ceil(len(self.labeled_dataset) / (self.labeled_batch_size * world_size))

    def train_dataloader(self) -> DataLoader:
        """The training loader: one paired batch per iteration (see :class:`TrainingStream`)."""
        self._setup_training()
        assert self.labeled_dataset is not None
        rank, world = self._rank_world()
        streams = [
            StreamSpec(
                "labeled", LABELED_STREAM, len(self.labeled_dataset), self.labeled_batch_size
            )
        ]
        if self.unlabeled_dataset is not None:
            streams.append(
                StreamSpec(
                    "unlabeled",
                    UNLABELED_STREAM,
                    len(self.unlabeled_dataset),
                    self.unlabeled_batch_size,
                )
            )
        dataset = PairedTrainingDataset(self.labeled_dataset, self.unlabeled_dataset)
        sampler = IterationSampler(
            dataset,
            streams,
            iterations_per_epoch=self.resolved_iterations_per_epoch(world),
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            start_iteration=self._start_iteration,
        )
        dataset.planner = sampler.plan  # integer indices: Lightning's overfit_batches sampler
        # Lightning calls set_epoch() only after creating the first iterator of a (resumed) run.
        sampler.set_epoch(int(self.trainer.current_epoch) if self.trainer is not None else 0)
        self._train_sampler = sampler
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return TrainingLoader(
            dataset,
            datamodule=self,
            batch_size=None,
            sampler=sampler,
            collate_fn=collate_training_batch,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    @property
    def start_iteration(self) -> int:
        """Global iteration the next training iterator starts from (for resuming)."""
        return self._start_iteration

    @start_iteration.setter
    def start_iteration(self, iteration: int) -> None:
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"start_iteration must be an integer >= 0, got {iteration!r}")
        self._start_iteration = iteration
        self._last_trained_iteration = None
        if self._train_sampler is not None:
            self._train_sampler.set_start_iteration(iteration)

    def set_start_iteration(self, iteration: int) -> None:
        """Makes the next training iterator start at global ``iteration`` (same as the setter)."""
        self.start_iteration = iteration

    def _module_iteration(self) -> int | None:
        """The trained LightningModule's own iteration count, where it keeps one."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        iteration = getattr(module, "iteration", None)
        if isinstance(iteration, int) and not isinstance(iteration, bool) and iteration >= 0:
            return iteration
        return None

    def data_position(self) -> int:
        """Global iteration the next training iterator starts from.

        Inside a Trainer whose LightningModule counts its completed iterations in an integer
        ``iteration`` attribute (:class:`~advmim_lightning.AdvMIMModule` does), that count
        alone: the batches then follow the model's progress however the checkpoint was made
        (``ModelCheckpoint`` mid-epoch, ``trainer.save_checkpoint`` after ``fit`` returned, an
        extended ``max_iterations``). Otherwise :attr:`next_iteration`.
        """
        iteration = self._module_iteration()
        return self.next_iteration if iteration is None else iteration

    @property
    def next_iteration(self) -> int:
        """Global iteration of the next training batch: one past the last batch handed to the
        LightningModule in this run, or ``start_iteration`` before any."""
        if self._last_trained_iteration is None:
            return self._start_iteration
        return self._last_trained_iteration + 1

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Records (and removes) the iteration index of training batches."""
        if isinstance(batch, dict) and ITERATION_KEY in batch and "labeled" in batch:
            self._last_trained_iteration = int(batch.pop(ITERATION_KEY))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Resume state (plain Python values, loadable with ``weights_only=True``)."""
        world = self._rank_world()[1]
        sampler = self._train_sampler
        state = {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "labeled_batch_size": self.labeled_batch_size,
            "unlabeled_batch_size": self.unlabeled_batch_size,
            "world_size": world,
            "iterations_per_epoch": sampler.iterations_per_epoch if sampler is not None else None,
        }
        if self._module_iteration() is None:  # the module keeps no count: this is the one
            state["next_iteration"] = self.next_iteration
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the next iteration (modules without a count of their own); warns when
        settings that change the batches differ.

        Raises:
            ValueError: When resuming training with another number of processes than the
                checkpoint's run (see :func:`check_resume_world_size`).
        """
        if not state_dict:
            return
        fitting = getattr(getattr(self.trainer, "state", None), "fn", "fit") == "fit"
        world = self._rank_world()[1]
        if fitting:
            check_resume_world_size(state_dict.get("world_size"), world)
        if self._module_iteration() is None and "next_iteration" in state_dict:
            self.start_iteration = int(state_dict["next_iteration"])
        if not fitting:  # evaluation reads no training batches
            return
        current = {
            "seed": self.seed,
            "labeled_batch_size": self.labeled_batch_size,
            "unlabeled_batch_size": self.unlabeled_batch_size,
        }
        changed = {
            k: (state_dict[k], v)
            for k, v in current.items()
            if k in state_dict and state_dict[k] is not None and state_dict[k] != v
        }
        if changed:
            detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            rank_zero_warn(
                f"Resuming the data stream with changed "
                f"settings ({detail}); the batches will differ from the interrupted run's."
            )
