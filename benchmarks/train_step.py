"""Time the real AdvMIM training iteration (all optimiser steps) inside a Lightning run.

For each setting (precision x labeled+unlabeled batch) a ``Trainer`` fits ``AdvMIMModule`` on
random in-memory batches; a callback times every iteration (CUDA events on a GPU, the wall
clock on a CPU) and the median after warm-up is reported with images/s and peak GPU memory::

    python benchmarks/train_step.py                          # GPU: fp32 and bf16, 8+8 and 32+32
    python benchmarks/train_step.py --small --device cpu     # seconds on a laptop CPU
    python benchmarks/train_step.py --precision bf16-mixed --batch 8 --iterations 50
    python benchmarks/train_step.py --option baseline --option fast   # speed options

On a GPU every speed option of :data:`OPTIONS` is measured by default, each against the
``baseline`` row of the same run; ``vs public`` is the speed-up over the published code's 8 + 8
median at the same precision (285 ms fp32, 329 ms bf16), printed for the default networks at
8 + 8 on a GPU only.

The networks are the library's defaults (Swin-UNet "tiny lite" + UNet at 224 x 224, 4
classes) unless ``--small``. docs/method.md records the published code at 285 ms (fp32) and 329 ms
(bf16) per 8 + 8 iteration on one H100.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from advmim_lightning import AdvMIMModule
from advmim_lightning.networks import SwinUNet, UNet


class RandomPairs(Dataset):
    """Whole random paired batches (the loader is not what is measured)."""

    def __init__(self, n: int, batch: int, size: int, classes: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batch = {
            "labeled": {
                "image": torch.rand(batch, 1, size, size, generator=gen),
                "label": torch.randint(0, classes, (batch, size, size), generator=gen),
            },
            "unlabeled": {"image": torch.rand(batch, 1, size, size, generator=gen)},
        }
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.batch


class IterationTimer(pl.Callback):
    """Milliseconds per training iteration (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: object = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.times.append(self._start.elapsed_time(end))
        else:
            self.times.append((time.perf_counter() - self._start) * 1000.0)


#: The published code's median 8 + 8 iteration on one H100 (docs/method.md), per precision.
PUBLISHED_MS = {"32-true": 285.0, "bf16-mixed": 329.0}

#: Speed options measured one at a time against ``baseline`` (``--option NAME``). Each maps to
#: module arguments, network arguments (both segmenters, or the transformer only) and
#: Trainer arguments. ``batched_streams`` changes batch-norm statistics (see the networks'
#: docs); the others keep the arithmetic up to rounding, though ``channels_last`` and
#: ``compile`` draw other dropout / drop-path masks (same distribution). ``fast`` combines all
#: but ``batched_streams``.
OPTIONS: dict[str, dict[str, dict]] = {
    "baseline": {},
    "channels_last": {"module": {"channels_last": True}},
    "foreach_sgd": {"module": {"optimizer_impl": "foreach"}},
    "fused_sgd": {"module": {"optimizer_impl": "fused"}},
    "cudnn_benchmark": {"trainer": {"benchmark": True}},
    "fused_attention": {"transformer": {"fused_attention": True}},
    "batched_streams": {"networks": {"batched_streams": True}},
    "compile": {"module": {"compile_networks": "default"}},
    "compile_cudagraphs": {"module": {"compile_networks": "reduce-overhead"}},
}
OPTIONS["fast"] = {
    "module": {"channels_last": True, "optimizer_impl": "fused", "compile_networks": "default"},
    "trainer": {"benchmark": True},
    "transformer": {"fused_attention": True},
}


def build_module(small: bool, size: int, classes: int, option: str = "baseline") -> AdvMIMModule:
    chosen = OPTIONS[option]
    networks = chosen.get("networks", {})
    transformer_args = {**networks, **chosen.get("transformer", {})}
    if small:
        cnn = UNet(num_classes=classes, channels=(8, 16, 32, 64, 128), **networks)
        transformer = SwinUNet(
            num_classes=classes,
            img_size=size,
            embed_dim=24,
            depths=(2, 2, 2, 2),
            num_heads=(1, 2, 4, 8),
            window_size=3,
            **transformer_args,
        )
        extra = {"mask_block_size": 16}
    else:
        cnn = UNet(num_classes=classes, **networks)
        transformer = SwinUNet(num_classes=classes, img_size=size, **transformer_args)
        extra = {}
    return AdvMIMModule(
        cnn=cnn,
        transformer=transformer,
        num_classes=classes,
        image_size=(size, size),
        max_iterations=10_000,
        **extra,
        **chosen.get("module", {}),
    )


def measure(
    device: str,
    precision: str,
    batch: int,
    iterations: int,
    warmup: int,
    small: bool,
    option: str = "baseline",
) -> dict:
    # Each row starts clean: no compiled graphs, CUDA-graph pools or modules of earlier rows.
    gc.collect()
    torch._dynamo.reset()
    if device == "gpu":
        torch.cuda.empty_cache()
    size, classes = (96, 4) if small else (224, 4)
    module = build_module(small, size, classes, option)
    timer = IterationTimer()
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        log_every_n_steps=50,
        # explicit, or a cudnn_benchmark row would leave it on for the rows after it
        **{"benchmark": False, **OPTIONS[option].get("trainer", {})},
    )
    loader = DataLoader(
        RandomPairs(warmup + iterations, batch, size, classes), batch_size=None, shuffle=False
    )
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)
    times = timer.times[warmup:]
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "gpu" else float("nan")
    return {
        "option": option,
        "precision": precision,
        "batch": f"{batch}+{batch}",
        "ms": median,
        "images_s": 2 * batch / median * 1000.0,
        "peak_gib": peak,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--precision", action="append", help="default: 32-true and bf16-mixed")
    parser.add_argument("--batch", type=int, action="append", help="labeled = unlabeled size")
    parser.add_argument(
        "--option",
        action="append",
        choices=sorted(OPTIONS),
        help="speed option(s) to measure (repeatable); default: baseline, plus every option "
        "on a GPU",
    )
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="small networks at 96 x 96")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    precisions = args.precision or ["32-true", "bf16-mixed"]
    batches = args.batch or ([8, 32] if device == "gpu" else [8])
    options = args.option or (list(OPTIONS) if device == "gpu" else ["baseline"])
    if device == "gpu":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"AdvMIM training iteration ({'small' if args.small else 'default'} networks), {machine}")
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; median of {args.iterations} iterations after "
        f"{args.warmup} warm-up"
    )
    print(
        f"{'option':<20} {'precision':<12} {'batch':>7} {'ms/iter':>9} {'images/s':>9} "
        f"{'peak GiB':>9} {'vs public':>9}"
    )
    rows = []
    for option in options:
        for precision in precisions:
            for batch in batches:
                row = measure(
                    device, precision, batch, args.iterations, args.warmup, args.small, option
                )
                rows.append(row)
                # the published code (285 ms fp32, 329 ms bf16): default networks, 8 + 8, GPU
                comparable = device == "gpu" and not args.small and batch == 8
                published = PUBLISHED_MS.get(precision)
                speedup = (
                    f"{published / row['ms']:>8.1f}x" if comparable and published else f"{'-':>9}"
                )
                print(
                    f"{row['option']:<20} {row['precision']:<12} {row['batch']:>7} "
                    f"{row['ms']:>9.1f} {row['images_s']:>9.1f} {row['peak_gib']:>9.2f} "
                    f"{speedup}",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
