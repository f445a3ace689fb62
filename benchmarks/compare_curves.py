"""Validation curves of an `advmim compare` output: has each method stopped improving?

Reads ``<output>/<method>-l<cases>-s<seed>/metrics.csv`` (the runs `advmim compare` trains) and
prints one markdown table per metric: a row per method and labeled-cases count, a column per
validation iteration, each cell the mean over the seeds that reached it. The last column is the
change over the second half of the run (last validation minus the one at half the iterations),
which is what "the supervised baseline has stopped improving" is read from.

    python benchmarks/compare_curves.py runs/compare_phantom
    python benchmarks/compare_curves.py runs/compare_phantom --metric val/dice_mean_transformer

A training column (logged every few iterations, e.g. the discriminator's loss) is averaged over
bins of ``--bin`` iterations, one column per bin:

    python benchmarks/compare_curves.py runs/domain_gap_main_s0.35 --metric train/disc_cnn --bin 100
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from advmim_lightning.commands.compare_plan import Combination, method_rank


def read_curve(
    metrics_csv: Path, metric: str, bin_size: int | None = None
) -> dict[int, float] | None:
    """``{iteration: value}`` of ``metric`` where it was logged (1-based iteration count); with
    ``bin_size``, the mean of its values in each bin ``(k - bin_size, k]``, keyed by ``k``. None
    if ``metrics.csv`` has no such column (e.g. the discriminator's loss of a CTCT run)."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and metric not in rows[0]:
        return None
    points = [(int(r["step"]) + 1, float(r[metric])) for r in rows if r.get(metric)]
    if bin_size is None:
        return dict(points)
    bins: dict[int, list[float]] = defaultdict(list)
    for iteration, value in points:
        bins[-(-iteration // bin_size) * bin_size].append(value)
    return {k: statistics.fmean(v) for k, v in sorted(bins.items())}


def logged_columns(metrics_csv: Path) -> list[str]:
    """The validation and training columns of one ``metrics.csv``."""
    with metrics_csv.open(newline="") as handle:
        head = next(csv.reader(handle), [])
    return sorted(k for k in head if k.startswith(("val/", "train/")))


def collect(
    output: Path, metric: str, bin_size: int | None = None
) -> dict[tuple[str, int], list[dict[int, float]]]:
    """The curves of every run folder in ``output``, grouped by (method, labeled cases); runs
    without the column are left out, and a column no run has is refused."""
    curves: dict[tuple[str, int], list[dict[int, float]]] = defaultdict(list)
    without = []
    for folder in sorted(p for p in output.iterdir() if p.is_dir()):
        run = Combination.from_name(folder.name)
        if run is None or not (folder / "metrics.csv").is_file():
            continue
        curve = read_curve(folder / "metrics.csv", metric, bin_size)
        if curve is None:
            without.append(folder / "metrics.csv")
        elif curve:
            curves[(run.method, run.labeled_cases)].append(curve)
    if not curves and without:
        raise SystemExit(
            f"{without[0]}: no column {metric!r}; validation and training columns there: "
            f"{logged_columns(without[0])}"
        )
    return curves


def table(curves: dict[tuple[str, int], list[dict[int, float]]], metric: str) -> str:
    """The markdown table of the mean curves (see the module docstring)."""
    iterations = sorted({i for runs in curves.values() for curve in runs for i in curve})
    if not iterations:
        return f"no values of {metric}"
    halfway = min(iterations, key=lambda i: abs(i - iterations[-1] / 2))
    head = ["method", "labeled", "seeds", *map(str, iterations), f"{halfway}→{iterations[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: | ---: |" + " ---: |" * (len(head) - 3)]

    def order(key: tuple[str, int]) -> tuple[int, str, int]:
        method, cases = key
        return method_rank(method), method, cases

    for method, cases in sorted(curves, key=order):
        runs = curves[(method, cases)]
        means = {
            i: statistics.fmean(c[i] for c in runs if i in c)
            for i in iterations
            if any(i in c for c in runs)
        }
        cells = [f"{means[i]:.3f}" if i in means else "" for i in iterations]
        change = (
            f"{means[iterations[-1]] - means[halfway]:+.3f}"
            if iterations[-1] in means and halfway in means
            else ""
        )
        lines.append(f"| {method} | {cases} | {len(runs)} | " + " | ".join([*cells, change]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the --output folder of advmim compare")
    parser.add_argument(
        "--metric",
        action="append",
        help="column(s) of metrics.csv (default: val/dice_mean, the reported network's mean Dice)",
    )
    parser.add_argument(
        "--bin",
        type=int,
        default=None,
        help="average each column over bins of this many iterations (for training columns)",
    )
    args = parser.parse_args(argv)
    if args.bin is not None and args.bin < 1:
        raise SystemExit(f"--bin must be a positive number of iterations, got {args.bin}")
    if not args.output.is_dir():
        raise SystemExit(f"{args.output}: not a folder (the --output of advmim compare)")
    printed = []
    for metric in args.metric or ["val/dice_mean"]:
        curves = collect(args.output, metric, args.bin)
        if not curves:
            raise SystemExit(
                f"{args.output}: no run folder <method>-l<cases>-s<seed> with a metrics.csv"
            )
        where = f"in bins of {args.bin} iterations" if args.bin else "by logged iteration"
        printed.append(f"{metric}, mean over seeds, {where}\n\n{table(curves, metric)}")
    text = "\n\n".join(printed)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
