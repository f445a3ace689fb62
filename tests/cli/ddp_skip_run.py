"""A 2-process DDP fit in ``nonfinite_check="skip"`` mode; run by ``test_ddp.py``.

Only rank 0's batch of iteration 1 overflows. Each rank saves its full training state before
and after every iteration to ``<out>/rank<r>.pt``. Usage: ``python ddp_skip_run.py OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from advmim_lightning import AdvMIMModule
from tiny import TINY_SIZE, StateSnapshots, tiny_batch, tiny_swin, tiny_unet


class RankPoisonedBatches(Dataset):
    """The same three batches on both ranks, but iteration 1 overflows on rank 0 only."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict:
        batch = tiny_batch(seed=index)
        if index == 1 and dist.get_rank() == 0:
            batch["unlabeled"]["image"][0] = 3e38
        return batch


def main(out: Path) -> None:
    torch.manual_seed(0)
    module = AdvMIMModule(
        cnn=tiny_unet(),
        transformer=tiny_swin(),
        image_size=(TINY_SIZE, TINY_SIZE),
        max_iterations=10,
        nonfinite_check="skip",
    )
    states = StateSnapshots()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        use_distributed_sampler=False,
        callbacks=[states],
    )
    trainer.fit(module, train_dataloaders=DataLoader(RankPoisonedBatches(), batch_size=None))
    states.states["skipped"] = torch.tensor(module.nonfinite.skipped_total)
    torch.save(states.states, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
