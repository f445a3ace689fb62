"""Validation curves of an `advmim compare` output: has each method stopped improving?

Reads ``<output>/<method>-l<cases>-s<seed>/metrics.csv`` (the runs `advmim compare` trains) and
prints one markdown table per metric: a row per method and labeled-cases count, a column per
validation iteration, each cell the mean over the seeds that reached it. The last column is the
change over the second half of the run (last validation minus the one at half the iterations),
which is what "the supervised baseline has stopped improving" is read from.

    python benchmarks/compare_curves.py runs/compare_phantom
    python benchmarks/compare_curves.py runs/compare_phantom --metric val/dice_mean_transformer
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RUN_FOLDER = re.compile(r"^(?P<method>[a-z]+)-l(?P<cases>\d+)-s(?P<seed>\d+)$")
METHOD_ORDER = ("supervised", "ctct", "advmim")


def read_curve(metrics_csv: Path, metric: str) -> dict[int, float]:
    """``{iteration: value}`` of ``metric`` at each validation (1-based iteration count)."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and metric not in rows[0]:
        raise SystemExit(
            f"{metrics_csv}: no column {metric!r}; validation columns there: "
            f"{sorted(k for k in rows[0] if k.startswith('val/'))}"
        )
    return {int(r["step"]) + 1: float(r[metric]) for r in rows if r.get(metric)}


def collect(output: Path, metric: str) -> dict[tuple[str, int], list[dict[int, float]]]:
    """The curves of every run folder in ``output``, grouped by (method, labeled cases)."""
    curves: dict[tuple[str, int], list[dict[int, float]]] = defaultdict(list)
    for folder in sorted(p for p in output.iterdir() if p.is_dir()):
        match = RUN_FOLDER.match(folder.name)
        if match is None or not (folder / "metrics.csv").is_file():
            continue
        curve = read_curve(folder / "metrics.csv", metric)
        if curve:
            curves[(match["method"], int(match["cases"]))].append(curve)
    return curves


def table(curves: dict[tuple[str, int], list[dict[int, float]]], metric: str) -> str:
    """The markdown table of the mean curves (see the module docstring)."""
    iterations = sorted({i for runs in curves.values() for curve in runs for i in curve})
    if not iterations:
        return f"no validation values of {metric}"
    halfway = min(iterations, key=lambda i: abs(i - iterations[-1] / 2))
    head = ["method", "labeled", "seeds", *map(str, iterations), f"{halfway}→{iterations[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: | ---: |" + " ---: |" * (len(head) - 3)]

    def order(key: tuple[str, int]) -> tuple[int, str, int]:
        method, cases = key
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return rank, method, cases

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
        help="validation column(s) of metrics.csv (default: val/dice_mean, the reported "
        "network's mean Dice)",
    )
    args = parser.parse_args(argv)
    if not args.output.is_dir():
        raise SystemExit(f"{args.output}: not a folder (the --output of advmim compare)")
    printed = []
    for metric in args.metric or ["val/dice_mean"]:
        curves = collect(args.output, metric)
        if not curves:
            raise SystemExit(
                f"{args.output}: no run folder <method>-l<cases>-s<seed> with a metrics.csv"
            )
        printed.append(
            f"{metric}, mean over seeds, by validation iteration\n\n{table(curves, metric)}"
        )
    text = "\n\n".join(printed)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
