"""Count the ATen operators one eager AdvMIM training iteration dispatches (CPU, no GPU needed).

On a GPU almost every ATen operator of the eager iteration is one kernel launch, and the eager
iteration is bound by those launches (``benchmarks/RESULTS.md``). Their count is therefore a
proxy of the eager GPU cost that any CPU can measure. A ``TorchDispatchMode`` counts every
operator dispatched during one whole iteration inside a Lightning fit (the forward passes,
the losses, both backward passes, clipping, every optimiser step, the non-finite flags), after
one warm-up iteration. ``computing`` leaves out the views (operators whose output aliases their
input: ``view``, ``transpose``, ``detach``, ...), which launch no kernel::

    python benchmarks/op_count.py                       # default networks, 8 + 8 at 224
    python benchmarks/op_count.py --small --batch 2     # seconds
    python benchmarks/op_count.py --path separate --path batched --top 15

The published step's counts (15,304 operators, 8,125 computing) were measured the same way
on the public AdvMIM training iteration at the same sizes; they are printed for comparison.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import RandomPairs, build_module

#: The published AdvMIM iteration (8 + 8 at 224, 4 classes, CPU, float32): all / computing.
PUBLISHED = {"all": 15_304, "computing": 8_125}

#: What each path sets on the module (``stream_batching``, ``method``); ``default`` is none.
PATHS: dict[str, dict] = {
    "default": {},
    "separate": {"stream_batching": "separate"},
    "batched": {"stream_batching": "batched"},
    "ctct": {"method": "ctct"},
    "supervised": {"method": "supervised"},
}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active, by overload name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket.__name__)] += 1
        if func.is_view:
            self.views += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def computing(self) -> int:
        return self.total - self.views


class CountIteration(pl.Callback):
    """Counts the operators of iteration ``index`` (0-based), from batch start to batch end."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.counter = OpCounter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.index:
            self.counter.__exit__(None, None, None)


def count(path: str, small: bool, batch: int, warmup: int = 1) -> OpCounter:
    """The operator counts of one eager iteration on ``path`` after ``warmup`` iterations."""
    size, classes = (96, 4) if small else (224, 4)
    module = build_module(small, size, classes, "baseline", **PATHS[path])
    counter = CountIteration(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=(warmup + 1) * module.optimizer_steps_per_iteration,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
        log_every_n_steps=50,
    )
    loader = DataLoader(RandomPairs(warmup + 1, batch, size, classes), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return counter.counter


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", action="append", choices=sorted(PATHS), help="repeatable")
    parser.add_argument("--small", action="store_true", help="small networks at 96 x 96")
    parser.add_argument("--batch", type=int, default=8, help="labeled (= unlabeled) batch")
    parser.add_argument("--top", type=int, default=0, help="list the N most frequent operators")
    parser.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    paths = args.path or ["separate", "default", "ctct", "supervised"]
    networks = "small networks at 96" if args.small else "default networks at 224"
    sizes = f"{args.batch} + {args.batch}"
    print(f"ATen operators of one eager training iteration, {networks}, {sizes}")
    print(f"{'path':<12} {'all':>8} {'computing':>10} {'vs published (computing)':>26}")
    if not args.small and args.batch == 8:
        published = f"{PUBLISHED['all']:>8,} {PUBLISHED['computing']:>10,}"
        print(f"{'published':<12} {published} {'1.00x':>26}")
    rows = []
    for path in paths:
        counter = count(path, args.small, args.batch)
        ratio = ""
        if not args.small and args.batch == 8:
            ratio = f"{counter.computing / PUBLISHED['computing']:.2f}x"
        print(f"{path:<12} {counter.total:>8,} {counter.computing:>10,} {ratio:>26}")
        if args.top:
            for name, n in counter.counts.most_common(args.top):
                print(f"{'':<14}{name:<40} {n:>6}")
        rows.append(
            {
                "path": path,
                "all": counter.total,
                "computing": counter.computing,
                "networks": "small" if args.small else "default",
                "batch": f"{args.batch}+{args.batch}",
                "torch": torch.__version__,
            }
        )
    if args.json is not None:
        with args.json.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
