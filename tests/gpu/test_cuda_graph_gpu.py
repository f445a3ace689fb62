"""``cuda_graph=True`` on a GPU: the captured iteration trains like the eager one.

Skipped without CUDA; ``benchmarks/gpu_run.sh`` runs it on a GPU machine. With
``ADVMIM_GPU_TEST_REHEARSAL=1`` it runs on the CPU instead, with toy networks and the step
function uncaptured (as ``tests/test_cuda_graph.py`` does), to rehearse the test code itself.

Each test prints what it measured (``pytest -s``), so a device run brings back the numbers
even where an assertion fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from advmim_lightning import AdvMIMModule
from advmim_lightning.method import contracts
from advmim_lightning.networks import SwinUNet, UNet
from tiny import TINY_SIZE, tiny_swin, tiny_unet

REHEARSAL = os.environ.get("ADVMIM_GPU_TEST_REHEARSAL") == "1"
pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or REHEARSAL),
    reason="needs a CUDA GPU (or ADVMIM_GPU_TEST_REHEARSAL=1 for a CPU rehearsal)",
)

SIZE = TINY_SIZE if REHEARSAL else 224
BATCH = 2 if REHEARSAL else 8


@pytest.fixture(autouse=True)
def _rehearse_on_cpu(monkeypatch):
    if REHEARSAL:
        monkeypatch.setattr(contracts, "check_cuda_graph_trainer", lambda trainer: None)


def make_module(max_iterations: int = 1000, **options) -> AdvMIMModule:
    """The default networks at 224 x 224 (toy ones in a rehearsal), seeded."""
    torch.manual_seed(0)
    if REHEARSAL:
        cnn, transformer, extra = tiny_unet(), tiny_swin(), {"mask_block_size": 16}
    else:
        cnn, transformer, extra = UNet(num_classes=4), SwinUNet(num_classes=4), {}
    return AdvMIMModule(
        cnn=cnn,
        transformer=transformer,
        num_classes=4,
        image_size=(SIZE, SIZE),
        max_iterations=max_iterations,
        **extra,
        **options,
    )


class Batches(Dataset):
    """Paired batches of smooth random images with intensity-band labels; ``fixed`` repeats one."""

    def __init__(self, n: int, fixed: bool = False) -> None:
        self.n, self.fixed = n, fixed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(0 if self.fixed else i)
        coarse = torch.rand(2 * BATCH, 1, SIZE // 16, SIZE // 16, generator=gen)
        images = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")
        labels = (images[:BATCH, 0] * 4).long().clamp_max(3)
        return {
            "labeled": {"image": images[:BATCH], "label": labels},
            "unlabeled": {"image": images[BATCH:]},
        }


class LossTrace(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def train(module: AdvMIMModule, dataset: Dataset, ckpt_path: str | None = None, **trainer_args):
    trace = LossTrace()
    callbacks = [trace, *trainer_args.pop("callbacks", [])]
    trainer = pl.Trainer(
        accelerator="cpu" if REHEARSAL else "gpu",
        devices=1,
        precision="32-true" if REHEARSAL else "bf16-mixed",
        max_epochs=1,
        logger=False,
        enable_checkpointing=len(callbacks) > 1,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(module, DataLoader(dataset, batch_size=None), ckpt_path=ckpt_path)
    return trainer, trace.losses


def weights(module: AdvMIMModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def update_difference(a: dict, b: dict, start: dict) -> float:
    """``||(a - start) - (b - start)|| / ||b - start||`` over every float weight."""
    keys = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    diff = torch.cat([(a[k] - b[k]).flatten() for k in keys])
    update = torch.cat([(b[k] - start[k]).flatten() for k in keys])
    return float(diff.norm() / update.norm())


def test_the_graphed_run_equals_the_eager_run_within_bf16_rounding_after_20_iterations():
    start = weights(make_module())
    runs = {}
    for name, options in (("eager", {}), ("eager again", {}), ("graphed", {"cuda_graph": True})):
        module = make_module(**options)
        _, losses = train(module, Batches(20))
        runs[name] = (weights(module), losses, module)
    graphed = runs["graphed"][2]._graphed
    assert graphed is not None and (REHEARSAL or graphed.graph is not None)
    floor = update_difference(runs["eager again"][0], runs["eager"][0], start)
    gap = update_difference(runs["graphed"][0], runs["eager"][0], start)
    loss_floor = largest_relative_difference(runs["eager again"][1], runs["eager"][1])
    loss_gap = largest_relative_difference(runs["graphed"][1], runs["eager"][1])
    print(
        f"\n[cuda_graph vs eager, 20 iterations] relative update difference: graphed {gap:.2e}, "
        f"eager run twice {floor:.2e}; largest relative loss difference: graphed "
        f"{loss_gap:.2e}, eager run twice {loss_floor:.2e}; final loss eager "
        f"{runs['eager'][1][-1]:.5f}, graphed {runs['graphed'][1][-1]:.5f}"
    )
    # Without deterministic algorithms two eager GPU runs already differ (atomics, cuDNN's
    # backward): the graph must stay within a few times that noise, or within bf16 rounding
    # (8 significant bits) where the eager runs agree.
    assert gap <= max(0.02, 3 * floor)
    assert loss_gap <= max(0.02, 3 * loss_floor)


def largest_relative_difference(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))


def test_an_interrupted_graphed_run_resumes_as_exactly_as_an_eager_one(tmp_path: Path):
    # 8 iterations straight against 4 + 4: each part warms up (3 eager iterations) and
    # captures, so the resumed part replays a graph captured after the resume.
    exact = {}
    for name, options in (("eager", {}), ("graphed", {"cuda_graph": True})):
        straight = make_module(max_iterations=8, **options)
        train(straight, Batches(8, fixed=True))
        first = make_module(max_iterations=8, **options)
        saver = ModelCheckpoint(tmp_path / name, save_last=True, every_n_train_steps=16)
        trainer, _ = train(first, Batches(8, fixed=True), max_steps=16, callbacks=[saver])
        assert first.iteration == 4 and trainer.global_step == 16
        checkpoint = tmp_path / name / "last.ckpt"
        resumed = make_module(max_iterations=8, **options)
        train(resumed, Batches(8, fixed=True), ckpt_path=str(checkpoint))
        assert resumed.iteration == 8
        a, b = weights(resumed), weights(straight)
        exact[name] = all(torch.equal(a[k], b[k]) for k in a)
        largest = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
        print(f"\n[resume, {name}] bitwise equal: {exact[name]}; largest difference {largest:.2e}")
    assert exact["graphed"] or not exact["eager"]
