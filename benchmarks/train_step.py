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
import contextlib
import gc
import json
import platform
import statistics
import time
from unittest import mock

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from advmim_lightning import AdvMIMModule
from advmim_lightning.method import contracts
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
    """Per-iteration GPU time (CUDA events) and the wall clock over the timed iterations.

    Nothing synchronises between the first and the last timed iteration (events are read at
    the end), so the host may run ahead of the GPU as in real training. ``wall_ms`` is the mean
    wall-clock time per timed iteration, Lightning's loop included, up to the GPU finishing
    the last one: the rate a training run gets. ``times`` are per-iteration times (GPU time
    between the batch's start and end events on CUDA; the wall clock on a CPU).
    """

    def __init__(self, warmup: int, iterations: int) -> None:
        self.warmup, self.iterations = warmup, iterations
        self.times: list[float] = []
        self.wall_ms = float("nan")
        self._events: list[tuple] = []
        self._start: object = None
        self._wall_start = 0.0

    def _timed(self, batch_idx: int) -> bool:
        return self.warmup <= batch_idx < self.warmup + self.iterations

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._timed(batch_idx):
            return
        if batch_idx == self.warmup:
            _synchronize(pl_module.device)
            self._wall_start = time.perf_counter()
        if pl_module.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._timed(batch_idx):
            return
        if pl_module.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self.times.append((time.perf_counter() - self._start) * 1000.0)
        if batch_idx == self.warmup + self.iterations - 1:
            _synchronize(pl_module.device)
            self.wall_ms = (time.perf_counter() - self._wall_start) * 1000.0 / self.iterations
            if self._events:
                self.times = [start.elapsed_time(end) for start, end in self._events]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ProfileWindow(pl.Callback):
    """``torch.profiler`` over a few iterations after warm-up: kernels and GPU-busy fraction.

    ``summary`` holds the CUDA kernels launched per iteration (kernels inside a replayed CUDA
    graph count individually), the share of the window's wall time in which at least one
    kernel ran, and the five kernels with the largest total time.
    """

    def __init__(self, start: int, iterations: int) -> None:
        self.start, self.iterations = start, iterations
        self.summary: dict = {}
        self._profiler: torch.profiler.profile | None = None
        self._wall = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.start:
            _synchronize(pl_module.device)
            # GPU activity only: host-side op events of a few thousand-kernel iterations take
            # minutes to collect and are not what is summarised. A CPU rehearsal records the
            # host (its summary counts no kernels) so that the code path still runs.
            activity = torch.profiler.ProfilerActivity
            on_gpu = pl_module.device.type == "cuda"
            self._profiler = torch.profiler.profile(
                activities=[activity.CUDA if on_gpu else activity.CPU]
            )
            self._profiler.__enter__()
            self._wall = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._profiler is None or batch_idx != self.start + self.iterations - 1:
            return
        _synchronize(pl_module.device)
        wall_us = (time.perf_counter() - self._wall) * 1e6
        self._profiler.__exit__(None, None, None)
        kernels = [
            e
            for e in self._profiler.events()
            if e.device_type == torch.autograd.DeviceType.CUDA
            and not e.name.startswith(("Memcpy", "Memset"))
        ]
        spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
        busy, end = 0.0, float("-inf")
        for lo, hi in spans:
            if hi > end:
                busy += hi - max(lo, end)
                end = hi
        totals: dict[str, float] = {}
        for e in kernels:
            totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us()
        top = sorted(totals.items(), key=lambda kv: -kv[1])[:5]
        self.summary = {
            "kernels_per_iteration": len(kernels) / self.iterations,
            "gpu_busy_fraction": busy / wall_us if wall_us else float("nan"),
            "profiled_ms_per_iteration": wall_us / 1000.0 / self.iterations,
            "top_kernels_ms_per_iteration": [
                (name[:80], total / 1000.0 / self.iterations) for name, total in top
            ],
        }
        self._profiler = None


#: The published code's median 8 + 8 iteration on one H100 (docs/method.md), per precision.
PUBLISHED_MS = {"32-true": 285.0, "bf16-mixed": 329.0}

#: The paths and speed options measured (``--option NAME``). Each maps to module arguments,
#: network arguments (both segmenters, or the transformer only) and Trainer arguments.
#: ``baseline`` is the library's defaults: every segmenter call of an iteration batched
#: (``stream_batching="batched"``), foreach SGD, and on one GPU the whole iteration as a CUDA
#: graph (``cuda_graph=None``, auto). ``eager`` is the same without the graph (what DDP and
#: CPUs run). ``published_order`` is the eager iteration as the published code calls it (one
#: call per stream, per-parameter SGD): the library's default before stream batching, and the
#: "before" row of a CPU run. The single eager options (``channels_last`` ... ``fused_attention``)
#: are measured on the eager path. All keep the arithmetic up to rounding and dropout draws.
OPTIONS: dict[str, dict[str, dict]] = {
    "baseline": {},
    "eager": {"module": {"cuda_graph": False}},
    "published_order": {
        "module": {"cuda_graph": False, "stream_batching": "separate", "optimizer_impl": "for_loop"}
    },
    "channels_last": {"module": {"cuda_graph": False, "channels_last": True}},
    "fused_sgd": {"module": {"cuda_graph": False, "optimizer_impl": "fused"}},
    "cudnn_benchmark": {"module": {"cuda_graph": False}, "trainer": {"benchmark": True}},
    "fused_attention": {"module": {"cuda_graph": False}, "transformer": {"fused_attention": True}},
    "compile": {"module": {"cuda_graph": False, "compile_networks": "default"}},
    "compile_cudagraphs": {"module": {"cuda_graph": False, "compile_networks": "reduce-overhead"}},
}
OPTIONS["fast"] = {
    "module": {
        "cuda_graph": False,
        "channels_last": True,
        "optimizer_impl": "fused",
        "compile_networks": "default",
    },
    "trainer": {"benchmark": True},
    "transformer": {"fused_attention": True},
}
#: The whole iteration as one CUDA graph: required, with the published call order (the graph
#: of 2026-11-27), with cuDNN benchmark and fused attention (with and without channels-last),
#: and with compiled networks inside the graph.
OPTIONS["cuda_graph"] = {"module": {"cuda_graph": True}}
OPTIONS["graph_published_order"] = {"module": {"cuda_graph": True, "stream_batching": "separate"}}
OPTIONS["fast_graph"] = {
    "module": {"cuda_graph": True},
    "trainer": {"benchmark": True},
    "transformer": {"fused_attention": True},
}
OPTIONS["fast_graph_channels_last"] = {
    "module": {"cuda_graph": True, "channels_last": True},
    "trainer": {"benchmark": True},
    "transformer": {"fused_attention": True},
}
OPTIONS["fast_compile_graph"] = {
    "module": {"cuda_graph": True, "compile_networks": "default"},
    "trainer": {"benchmark": True},
    "transformer": {"fused_attention": True},
}


def build_module(
    small: bool, size: int, classes: int, option: str = "baseline", **module_args
) -> AdvMIMModule:
    """The measured module: ``option``'s settings and networks, then ``module_args``."""
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
        **{**extra, **chosen.get("module", {}), **module_args},
    )


def measure(
    device: str,
    precision: str,
    batch: int,
    iterations: int,
    warmup: int,
    small: bool,
    option: str = "baseline",
    profile: int = 0,
) -> dict:
    """One row: ``warmup`` untimed iterations, then ``iterations`` timed (and profiled) ones."""
    # Each row starts clean: no compiled graphs, CUDA-graph pools or modules of earlier rows.
    gc.collect()
    torch._dynamo.reset()
    if device == "gpu":
        torch.cuda.empty_cache()
    size, classes = (96, 4) if small else (224, 4)
    module = build_module(small, size, classes, option)
    timer = IterationTimer(warmup, iterations)
    callbacks: list[pl.Callback] = [timer]
    profiler = None
    if profile:
        profiler = ProfileWindow(start=warmup + iterations, iterations=profile)
        callbacks.append(profiler)
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        log_every_n_steps=50,
        # explicit, or a cudnn_benchmark row would leave it on for the rows after it
        **{"benchmark": False, **OPTIONS[option].get("trainer", {})},
    )
    loader = DataLoader(
        RandomPairs(warmup + iterations + profile, batch, size, classes),
        batch_size=None,
        shuffle=False,
        pin_memory=device == "gpu",  # as the data module pins on a GPU: no host sync per copy
    )
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    rehearsal = contextlib.nullcontext()
    if device == "cpu" and module.hparams.get("cuda_graph"):
        # A CPU cannot capture: run the graph's step function uncaptured, to rehearse the
        # script before a GPU run (the numbers say nothing about the graph's speed).
        rehearsal = mock.patch.object(contracts, "check_cuda_graph_trainer", lambda trainer: None)
    with rehearsal:
        trainer.fit(module, train_dataloaders=loader)
    times = timer.times
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "gpu" else float("nan")
    row = {
        "option": option,
        "precision": precision,
        "batch": f"{batch}+{batch}",
        "ms": timer.wall_ms,
        "median_gpu_ms": statistics.median(times),
        "images_s": 2 * batch / timer.wall_ms * 1000.0,
        "peak_gib": peak,
        "row_seconds": time.perf_counter() - started,
    }
    if profiler is not None:
        row["profile"] = profiler.summary
    return row


def describe_machine(device: str) -> str:
    if device == "gpu":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


HEADER = (
    f"{'option':<20} {'precision':<12} {'batch':>7} {'ms/iter':>9} {'GPU ms':>8} "
    f"{'images/s':>9} {'peak GiB':>9} {'vs public':>9}"
)


def format_row(row: dict, device: str, small: bool) -> str:
    """A table line; ``vs public`` is the speed-up over the published code (default networks,
    8 + 8, GPU only)."""
    comparable = device == "gpu" and not small and row["batch"] == "8+8"
    published = PUBLISHED_MS.get(row["precision"])
    speedup = f"{published / row['ms']:>8.1f}x" if comparable and published else f"{'-':>9}"
    return (
        f"{row['option']:<20} {row['precision']:<12} {row['batch']:>7} {row['ms']:>9.1f} "
        f"{row['median_gpu_ms']:>8.1f} {row['images_s']:>9.1f} {row['peak_gib']:>9.2f} {speedup}"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--precision", action="append", help="default: 32-true and bf16-mixed")
    parser.add_argument("--batch", type=int, action="append", help="labeled = unlabeled size")
    parser.add_argument(
        "--option",
        action="append",
        choices=sorted(OPTIONS),
        help="path(s) and speed option(s) to measure (repeatable); default: published_order "
        "and baseline on a CPU, every option on a GPU",
    )
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations first")
    parser.add_argument("--small", action="store_true", help="small networks at 96 x 96")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timed iterations, profile N more (kernels per iteration, GPU-busy)",
    )
    parser.add_argument("--json", help="append each row as a JSON line to this file")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    precisions = args.precision or ["32-true", "bf16-mixed"]
    batches = args.batch or ([8, 32] if device == "gpu" else [8])
    cpu_rows = ["published_order", "baseline"]  # before and after stream batching
    options = args.option or (list(OPTIONS) if device == "gpu" else cpu_rows)
    machine = describe_machine(device)
    if device == "cpu" and any(OPTIONS[o].get("module", {}).get("cuda_graph") for o in options):
        print("note: cuda_graph rows on a CPU run the step function uncaptured (rehearsal)")
    print(f"AdvMIM training iteration ({'small' if args.small else 'default'} networks), {machine}")
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {args.iterations} iterations after {args.warmup} "
        "warm-up: ms/iter = wall clock per iteration, GPU ms = median GPU time per iteration"
    )
    print(HEADER)
    rows = []
    for option in options:
        for precision in precisions:
            for batch in batches:
                row = measure(
                    device,
                    precision,
                    batch,
                    args.iterations,
                    args.warmup,
                    args.small,
                    option,
                    args.profile,
                )
                row.update(
                    machine=machine,
                    torch=torch.__version__,
                    lightning=pl.__version__,
                    date=time.strftime("%Y-%m-%d"),
                    networks="small" if args.small else "default",
                )
                rows.append(row)
                print(format_row(row, device, args.small), flush=True)
                if row.get("profile"):
                    print(f"  profile: {json.dumps(row['profile'])}", flush=True)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
