"""The domain-gap study's tables, from the run folders of `benchmarks/compare_domain_gap.sh`.

Each argument is one study's output folder (``runs/domain_gap_<study>_s<strength>``, or any
``advmim compare`` output, named by its folder). Every run folder in it
(``<method>-l<cases>-s<seed>``) that finished its test contributes its
``test_metrics_<network>.csv`` (the ``mean`` row: the mean over the test cases). Prints
markdown tables: a row per study, method and labeled-case count, with the mean ± standard
deviation over the seeds of each network's mean Dice (foreground classes, %), the per-class
Dice, and each seed's value; then, for the runs that trained discriminators, their losses
over the last 100 iterations.

    python benchmarks/domain_gap_tables.py runs/domain_gap_main_s0.35 runs/domain_gap_control_s0.35
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from advmim_lightning.commands.compare_plan import Combination, method_rank

STUDY_FOLDER = re.compile(r"^domain_gap_(?P<study>.+?)_s(?P<strength>[0-9.]+)$")
NETWORKS = ("cnn", "transformer")
CLASSES = ("RV", "Myo", "LV")
#: compare_domain_gap.sh's studies, in the order the tables list them (others follow by name).
STUDY_ORDER = ("main", "control", "masked_only", "adversarial_only", "no_masked_pseudo")
DISCRIMINATOR_COLUMNS = ("disc_cnn", "adv_cnn", "disc_transformer", "adv_transformer")


def mean_row(path: Path) -> dict[str, float]:
    """The ``mean`` row of one ``test_metrics_<network>.csv``, as numbers."""
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["case_id"] == "mean"]
    if not rows:
        raise SystemExit(f"{path}: no 'mean' row (expected the test's per-case table)")
    return {k: float(v) for k, v in rows[-1].items() if k != "case_id" and v != ""}


def late_losses(metrics_csv: Path, last: int = 100) -> dict[str, float]:
    """The discriminator columns' means over the run's last ``last`` iterations (empty if none)."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or f"train/{DISCRIMINATOR_COLUMNS[0]}" not in rows[0]:
        return {}
    end = max(int(r["step"]) for r in rows)
    late = [r for r in rows if int(r["step"]) > end - last]
    return {
        c: statistics.fmean(float(r[f"train/{c}"]) for r in late if r[f"train/{c}"])
        for c in DISCRIMINATOR_COLUMNS
    }


def collect(folders: list[Path]) -> dict[tuple[str, str, int], dict[int, dict]]:
    """``{(study, method, cases): {seed: {"cnn": row, "transformer": row, "losses": ...}}}``."""
    runs: dict[tuple[str, str, int], dict[int, dict]] = defaultdict(dict)
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: not a folder (a compare_domain_gap.sh output)")
        match = STUDY_FOLDER.match(folder.name)
        study = f"{match['study']} (strength {match['strength']})" if match else folder.name
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = Combination.from_name(run.name)
            files = [run / f"test_metrics_{n}.csv" for n in NETWORKS]
            if found is None or not all(f.is_file() for f in files):
                continue
            entry = {n: mean_row(f) for n, f in zip(NETWORKS, files, strict=True)}
            entry["losses"] = late_losses(run / "metrics.csv")
            runs[(study, found.method, found.labeled_cases)][found.seed] = entry
    if not runs:
        raise SystemExit("no finished run (<method>-l<cases>-s<seed>/test_metrics_cnn.csv) found")
    return runs


def spread(values: list[float]) -> str:
    """``mean ± std`` in %, or the single value."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def tables(runs: dict[tuple[str, str, int], dict[int, dict]]) -> str:
    """The markdown tables (see the module docstring)."""

    def order(key: tuple[str, str, int]) -> tuple[int, str, int, str, int]:
        study, method, cases = key
        name = study.split(" (")[0]
        place = STUDY_ORDER.index(name) if name in STUDY_ORDER else len(STUDY_ORDER)
        return place, study, method_rank(method), method, cases

    keys = sorted(runs, key=order)
    head = "| study | method | labeled | seeds | CNN Dice | transformer Dice |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: |"]
    per_class = ["| study | method | labeled | network | " + " | ".join(CLASSES) + " |"]
    per_class.append("| --- | --- | ---: | --- |" + " ---: |" * len(CLASSES))
    per_seed = [
        "| study | method | labeled | network | seeds | Dice per seed |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    losses = [
        "| study | method | labeled | seeds | " + " | ".join(DISCRIMINATOR_COLUMNS) + " |",
        "| --- | --- | ---: | ---: |" + " ---: |" * len(DISCRIMINATOR_COLUMNS),
    ]
    for key in keys:
        study, method, cases = key
        seeds = sorted(runs[key])
        cells = [spread([runs[key][s][n]["dice_mean"] for s in seeds]) for n in NETWORKS]
        lines.append(f"| {study} | {method} | {cases} | {len(seeds)} | " + " | ".join(cells) + " |")
        for network in NETWORKS:
            classes = [spread([runs[key][s][network][f"dice_{c}"] for s in seeds]) for c in CLASSES]
            row = f"| {study} | {method} | {cases} | {network} | "
            per_class.append(row + " | ".join(classes) + " |")
            values = " / ".join(f"{100 * runs[key][s][network]['dice_mean']:.1f}" for s in seeds)
            names = ", ".join(map(str, seeds))
            per_seed.append(f"{row}{names} | {values} |")
        with_losses = [s for s in seeds if runs[key][s]["losses"]]
        if with_losses:
            means = [
                f"{statistics.fmean(runs[key][s]['losses'][c] for s in with_losses):.3f}"
                for c in DISCRIMINATOR_COLUMNS
            ]
            losses.append(
                f"| {study} | {method} | {cases} | {len(with_losses)} | " + " | ".join(means) + " |"
            )
    parts = [
        "Test Dice (%), mean ± std over seeds (mean over the test cases and foreground classes)",
        "\n".join(lines),
        "Dice per class (%), mean ± std over seeds",
        "\n".join(per_class),
        "Test Dice (%) per seed",
        "\n".join(per_seed),
    ]
    if len(losses) > 2:
        parts += [
            "Discriminator (disc_*) and generator-side adversarial (adv_*) losses, least "
            "squares, mean over each run's last 100 iterations, then over seeds",
            "\n".join(losses),
        ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="compare_domain_gap.sh outputs")
    args = parser.parse_args(argv)
    text = tables(collect(args.folders))
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
