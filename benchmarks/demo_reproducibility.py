"""How much the quickstart's result moves with the thread count and the seed.

Runs ``advmim fit`` then ``advmim test`` on ``configs/quickstart.yaml`` once per (threads, seed)
pair, each in its own process with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and
``torch.set_num_threads`` set to the thread count, and prints one row per run (final validation
Dice of both networks, test Dice of the evaluated network, wall and CPU time) and the spread
(max - min) of each column over thread counts at a fixed seed and over seeds at a fixed thread
count. The seed sets ``seed_everything`` (network initialisation), ``model.rng_seed`` (masks,
drop path) and ``data.seed`` (sampling, augmentation); the phantom and its split stay fixed.

    python benchmarks/demo_reproducibility.py                       # threads 1 2, seed 0
    python benchmarks/demo_reproducibility.py --seeds 0 1 2 --threads 2
    python benchmarks/demo_reproducibility.py --iterations 20       # a quick smoke run

Runs go to a temporary folder (``--runs_dir`` to keep them). Results measured here are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from advmim_lightning.run.main import main
main(sys.argv[2:])
"""


def _last(path: Path, column: str) -> float:
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(column)]
    return float(rows[-1][column]) if rows else float("nan")


def run_once(configs: list[str], threads: int, seed: int, runs_dir: Path, extra: list[str]) -> dict:
    """Fit and test one quickstart run; returns its row of the table."""
    name = f"t{threads}-s{seed}"
    words = [w for c in configs for w in ("-c", c)]
    words += ["--runs_dir", str(runs_dir), "--run_name", name]
    words += ["--wandb_mode", "disabled"]
    seeds = ["--seed_everything", str(seed), "--model.rng_seed", str(seed)]
    seeds += ["--data.seed", str(seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for step in (["fit", *words, *seeds, *extra], ["test", *words, *extra]):
        if step[0] == "test":
            step += ["--ckpt_path", str(runs_dir / name / "checkpoints" / "last.ckpt")]
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(threads), *step], env=env, check=False, **quiet
        )
        if done.returncode:
            raise SystemExit(f"run {name} failed at `advmim {step[0]}` (exit {done.returncode})")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_dir = runs_dir / name
    return {
        "threads": threads,
        "seed": seed,
        "val_cnn": _last(run_dir / "metrics.csv", "val/dice_mean_cnn"),
        "val_transformer": _last(run_dir / "metrics.csv", "val/dice_mean_transformer"),
        "test_dice": _last(run_dir / "test_metrics.csv", "dice_mean"),
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }


def _spread(rows: list[dict], key: str, by: str) -> float:
    """Largest max - min of ``key`` over groups that share every setting but ``by``."""
    fixed = "seed" if by == "threads" else "threads"
    groups: dict[int, list[float]] = {}
    for row in rows:
        groups.setdefault(row[fixed], []).append(row[key])
    spans = [max(v) - min(v) for v in groups.values() if len(v) > 1]
    return max(spans) if spans else float("nan")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", action="append", help="config file(s) (default: configs/quickstart.yaml)"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, help="override model.max_iterations")
    parser.add_argument("--runs_dir", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    configs = args.config or [str(ROOT / "configs/quickstart.yaml")]
    extra = [] if args.iterations is None else ["--model.max_iterations", str(args.iterations)]
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = Path(args.runs_dir or scratch)
        rows = [
            run_once(configs, threads, seed, runs_dir, extra)
            for seed in args.seeds
            for threads in args.threads
        ]
    keys = ("val_cnn", "val_transformer", "test_dice")
    print("| threads | seed | val Dice CNN | val Dice transformer | test Dice | wall s | CPU s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        values = " | ".join(f"{row[k]:.3f}" for k in keys)
        timing = f"{row['wall_s']:.0f} | {row['cpu_s']:.0f}"
        print(f"| {row['threads']} | {row['seed']} | {values} | {timing} |")
    for by in ("threads", "seed"):
        spans = ", ".join(f"{k} {_spread(rows, k, by):.3f}" for k in keys)
        print(f"spread (max - min) over {by}: {spans}")
    return rows


if __name__ == "__main__":
    main()
