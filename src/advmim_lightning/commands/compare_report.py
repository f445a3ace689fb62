"""The tables and the plot of ``advmim compare``: rows, ``compare.csv``, ``summary.md``, PNG.

Kept apart from :mod:`advmim_lightning.commands.compare` (which plans and runs the combinations)
so the report can be rebuilt from finished run folders alone. A *row* is one value::

    {"method": "advmim", "network": "cnn", "labeled_cases": 3, "seed": 0, "class": "LV",
     "metric": "dice", "value": 0.91}

where ``network`` is the scored segmenter (``cnn``, ``transformer`` or ``ensemble``),
``class`` is a foreground class name or ``"mean"`` (the mean over classes) and the value is
the mean over the test cases, read from the ``mean`` row of the run's
``test_metrics_<network>.csv``. ``summary.md`` has one column set per network, the plot one
line style per network.

The files ``compare`` writes are listed with their SHA-256 in ``compare_manifest.json``
(:func:`record_report_files`); :func:`check_report_files` refuses to replace a ``compare.csv``,
``summary.md`` or ``compare.png`` that it did not write (or that was changed since).
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from advmim_lightning.evaluation.case_metrics import METRIC_NAMES

__all__ = [
    "COLUMNS",
    "MANIFEST",
    "NETWORKS",
    "REPORT_FILES",
    "check_report_files",
    "network_csv",
    "read_network_means",
    "read_test_means",
    "record_report_files",
    "summary_markdown",
    "summary_table",
    "write_csv",
    "write_plot",
]

#: Columns of ``compare.csv``, in order.
COLUMNS = ("method", "network", "labeled_cases", "seed", "class", "metric", "value")
#: The networks a comparison can score (``model.eval_network``), and their line styles.
NETWORKS = ("cnn", "transformer", "ensemble")
_LINE_STYLES = {"cnn": "-", "transformer": "--", "ensemble": ":"}
_NETWORK_NAMES = {"cnn": "CNN", "transformer": "Transformer", "ensemble": "Ensemble"}
#: Metrics reported in percent in the summary (the others are distances).
_PERCENT = {"dice", "nsd"}
_HEADERS = {"dice": "Dice (%)", "hd95": "HD95", "asd": "ASD", "nsd": "NSD (%)"}
BASELINE = "supervised"
#: The files of the report, in the comparison folder.
REPORT_FILES = ("compare.csv", "summary.md", "compare.png")
#: What ``compare`` wrote into the comparison folder: ``{"files": {name: sha256}}``.
MANIFEST = "compare_manifest.json"
_MANIFEST_FORMAT = "advmim-compare-manifest"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_files(output: Path) -> dict[str, str]:
    try:
        record = json.loads((output / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != _MANIFEST_FORMAT:
        return {}
    files = record.get("files")
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def check_report_files(output: Path) -> None:
    """Refuse report files in ``output`` that ``compare`` did not write, before anything runs.

    Raises:
        ValueError: Naming the file, when a ``compare.csv``, ``summary.md`` or ``compare.png``
            exists that ``compare_manifest.json`` does not list, or whose content differs
            from what it lists (edited since).
    """
    written = _manifest_files(output)
    for name in REPORT_FILES:
        path = output / name
        if not path.exists():
            continue
        if name not in written:
            raise ValueError(
                f"{path} exists and was not written by advmim compare (no record of it in "
                f"{output / MANIFEST}); it is not replaced: move it away or choose another "
                "--output"
            )
        if not path.is_file() or _sha256(path) != written[name]:
            raise ValueError(
                f"{path} was changed since advmim compare wrote it (it differs from its record "
                f"in {output / MANIFEST}); it is not replaced: move it away or choose another "
                "--output"
            )


def record_report_files(output: Path, paths: Sequence[Path]) -> Path:
    """List the report files just written (name and SHA-256) in ``compare_manifest.json``.

    A report file not among ``paths`` (``compare.png`` when nothing finished) is removed when
    the manifest listed it, so no stale plot stays beside new tables.
    """
    listed = _manifest_files(output)
    names = {Path(p).name for p in paths}
    for name in REPORT_FILES:
        if name in listed and name not in names:
            (output / name).unlink(missing_ok=True)
    record = {
        "format": _MANIFEST_FORMAT,
        "files": {Path(p).name: _sha256(Path(p)) for p in paths},
    }
    manifest = output / MANIFEST
    manifest.write_text(json.dumps(record, indent=1) + "\n")
    return manifest


def read_test_means(path: Path) -> dict[str, dict[str, float]] | None:
    """The ``mean`` row of a ``test_metrics.csv`` as ``{metric: {class: value}}``.

    Args:
        path: The file ``advmim test`` wrote (``case_id`` then ``<metric>_<class>`` columns,
            one row per case and a final ``mean`` row).

    Returns:
        ``{"dice": {"RV": ..., "mean": ...}, "hd95": {...}, ...}``, or ``None`` when the file
        is missing or incomplete (no ``mean`` row with every column, e.g. a test killed while
        writing), which makes its combination unfinished.
    """
    try:
        with path.open(newline="") as handle:
            table = list(csv.reader(handle))
    except OSError:
        return None
    if not table or not table[0] or table[0][0] != "case_id":
        return None
    header = table[0]
    means = [row for row in table[1:] if row and row[0] == "mean"]
    if len(means) != 1 or len(means[0]) != len(header):
        return None
    values: dict[str, dict[str, float]] = {metric: {} for metric in METRIC_NAMES}
    for column, text in zip(header[1:], means[0][1:], strict=True):
        metric, _, name = column.partition("_")
        if metric not in values or not name:
            return None
        try:
            values[metric][name] = float(text)
        except ValueError:
            return None
    if any("mean" not in per_class for per_class in values.values()):
        return None
    return values


def network_csv(network: str) -> str:
    """The test table of one network in a combination's run folder."""
    return f"test_metrics_{network}.csv"


def read_network_means(
    run_dir: Path, networks: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]] | None:
    """``{network: read_test_means(...)}`` of a run, or None unless every network's table is
    complete (the combination is then unfinished)."""
    found = {}
    for network in networks:
        means = read_test_means(run_dir / network_csv(network))
        if means is None:
            return None
        found[network] = means
    return found


def rows_of_run(
    method: str,
    labeled_cases: int,
    seed: int,
    means: Mapping[str, Mapping[str, float]],
    network: str = "transformer",
) -> list[dict[str, Any]]:
    """The rows of one network of a finished combination (classes in file order, ``mean``
    last)."""
    rows = []
    for metric in METRIC_NAMES:
        per_class = means[metric]
        for name in [n for n in per_class if n != "mean"] + ["mean"]:
            rows.append(
                {
                    "method": method,
                    "network": network,
                    "labeled_cases": labeled_cases,
                    "seed": seed,
                    "class": name,
                    "metric": metric,
                    "value": per_class[name],
                }
            )
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Write rows as ``compare.csv`` (:data:`COLUMNS`); the header alone when there are none."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in COLUMNS})
    return path


def _values(rows: Iterable[Mapping[str, Any]]) -> dict[tuple, dict[int, float]]:
    """``{(method, network, labeled_cases, class, metric): {seed: value}}``."""
    table: dict[tuple, dict[int, float]] = {}
    for row in rows:
        key = (row["method"], row["network"], row["labeled_cases"], row["class"], row["metric"])
        table.setdefault(key, {})[int(row["seed"])] = float(row["value"])
    return table


def _networks(rows: Iterable[Mapping[str, Any]], networks: Sequence[str] | None) -> list[str]:
    """The networks to report: those given, else those the rows hold (in first-seen order)."""
    if networks is not None:
        return list(networks)
    return list(dict.fromkeys(str(row["network"]) for row in rows))


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _cell(values: Sequence[float], metric: str) -> str:
    scale = 100.0 if metric in _PERCENT else 1.0
    mean, std = _mean_std([v * scale for v in values])
    digits = 1 if metric in _PERCENT else 2
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    labeled_cases: Sequence[int],
    networks: Sequence[str] | None = None,
) -> str:
    """The paper-style table: mean ± std over seeds per method and labeled-cases count.

    One column set per network: Dice, HD95, ASD and NSD of the mean over classes, and the
    Dice gain over ``supervised`` at the same labeled count and network (difference of the
    means, in Dice points) when ``supervised`` is among the methods; before them, the seeds
    that finished (for every network).

    Args:
        rows: Rows as returned by :func:`advmim_lightning.commands.compare.run_comparison`.
        methods: Methods in the order of the table.
        labeled_cases: Labeled-cases counts in the order of the table.
        networks: Networks in the order of the column sets; None: those of the rows.

    Returns:
        A markdown table (no trailing newline); a line saying so when there are no rows.
    """
    table = _values(rows)
    networks = _networks(rows, networks)
    with_gain = BASELINE in methods
    header = ["Method", "Labeled cases", "Seeds"]
    for network in networks:
        name = _NETWORK_NAMES.get(network, network)
        header += [f"{name} {_HEADERS[m]}" for m in METRIC_NAMES]
        if with_gain:
            header.append(f"{name} Dice gain over supervised")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| --- | ---: | ---: |" + " ---: |" * (len(header) - 3))
    for count in labeled_cases:
        for method in methods:
            seeds = [table.get((method, n, count, "mean", "dice")) for n in networks]
            if not seeds or not all(seeds):
                continue
            cells = [method, str(count), str(min(len(d) for d in seeds if d))]
            for network in networks:
                dice = table[(method, network, count, "mean", "dice")]
                for metric in METRIC_NAMES:
                    values = table[(method, network, count, "mean", metric)].values()
                    cells.append(_cell(list(values), metric))
                if with_gain:
                    baseline = table.get((BASELINE, network, count, "mean", "dice"))
                    if method == BASELINE or not baseline:
                        cells.append("—")
                    else:
                        gain = 100.0 * (
                            statistics.fmean(dice.values()) - statistics.fmean(baseline.values())
                        )
                        cells.append(f"{gain:+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "No combination has finished: there is nothing to summarise."
    return "\n".join(lines)


def _class_table(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    labeled_cases: Sequence[int],
    networks: Sequence[str],
) -> str:
    """Dice (%) per class, mean ± std over seeds, one row per method, count and network."""
    table = _values(rows)
    names: list[str] = []
    for row in rows:
        if row["metric"] == "dice" and row["class"] != "mean" and row["class"] not in names:
            names.append(row["class"])
    lines = ["| Method | Network | Labeled cases | " + " | ".join(names) + " |"]
    lines.append("| --- | --- | ---: |" + " ---: |" * len(names))
    for count in labeled_cases:
        for method in methods:
            for network in networks:
                if (method, network, count, "mean", "dice") not in table:
                    continue
                cells = [
                    _cell(list(table[(method, network, count, n, "dice")].values()), "dice")
                    for n in names
                ]
                lines.append(f"| {method} | {network} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    labeled_cases: Sequence[int],
    seeds: Sequence[int],
    failed: Mapping[str, str],
    details: Sequence[str] = (),
    networks: Sequence[str] | None = None,
) -> str:
    """The whole ``summary.md``: the table, Dice per class, the settings and any failures.

    Args:
        rows: All rows of the finished combinations.
        methods: Methods, in table order.
        labeled_cases: Labeled-cases counts, in table order.
        seeds: The seeds asked for.
        failed: Failed combinations: run name -> error line.
        details: Lines about how the runs were made (command, checkpoint tested, notes).
        networks: The scored networks, in column order; None: those of the rows.
    """
    networks = _networks(rows, networks)
    parts = [
        "# advmim compare",
        "",
        f"Test-set scores, mean ± standard deviation over the seeds that finished (of seeds "
        f"{', '.join(map(str, seeds))}); each seed's value is the mean over the test cases "
        "and the foreground classes. Dice and NSD in %, HD95 and ASD in the data's units "
        "(mm where the spacing is known, voxels otherwise). The Dice gain is the difference "
        "to `supervised` at the same labeled count and network, in Dice points. One column "
        f"set per scored network ({', '.join(networks)}).",
        "",
        summary_table(rows, methods, labeled_cases, networks),
    ]
    if rows:
        classes = _class_table(rows, methods, labeled_cases, networks)
        parts += ["", "## Dice per class (%)", "", classes]
    if details:
        parts += ["", "## How it was run", "", *(f"- {line}" for line in details)]
    if failed:
        parts += ["", "## Failed combinations", ""]
        parts += [f"- `{name}`: {error}" for name, error in failed.items()]
    return "\n".join(parts) + "\n"


def write_plot(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    labeled_cases: Sequence[int],
    path: Path,
    networks: Sequence[str] | None = None,
) -> Path:
    """Dice (mean over classes, %) against labeled cases: one line per method and network,
    a colour per method and a line style per network (CNN solid, transformer dashed,
    ensemble dotted).

    Each point is the mean over seeds with a ± one standard deviation error bar; every seed's
    value is drawn as a small dot, so the spread stays visible with two seeds too.

    Args:
        rows: Rows of the finished combinations (at least one).
        methods: Methods, in legend order.
        labeled_cases: The labeled-cases counts (x axis ticks).
        path: The PNG to write.
        networks: The scored networks; None: those of the rows.

    Returns:
        ``path``.
    """
    # A Figure without pyplot: no GUI backend and no global state (a notebook's backend and
    # open figures stay as they are).
    from matplotlib.figure import Figure

    table = _values(rows)
    networks = _networks(rows, networks)
    figure = Figure(figsize=(6.0, 4.2), dpi=120)
    axes = figure.subplots()
    span = (max(labeled_cases) - min(labeled_cases)) or 1
    lines = [(m, n) for m in methods for n in networks]
    for index, (method, network) in enumerate(lines):
        colour = f"C{methods.index(method)}"
        dodge = 0.015 * span * (index - (len(lines) - 1) / 2)  # keep equal points apart
        xs, means, stds = [], [], []
        for count in labeled_cases:
            dice = table.get((method, network, count, "mean", "dice"))
            if not dice:
                continue
            values = [100.0 * v for v in dice.values()]
            mean, std = _mean_std(values)
            xs.append(count + dodge)
            means.append(mean)
            stds.append(0.0 if std is None else std)
            axes.scatter([count + dodge] * len(values), values, s=10, color=colour, alpha=0.4)
        if xs:
            axes.errorbar(
                xs,
                means,
                yerr=stds,
                color=colour,
                linestyle=_LINE_STYLES.get(network, "-."),
                marker="o",
                capsize=4,
                label=f"{method} ({_NETWORK_NAMES.get(network, network)})",
            )
    axes.set_xticks(list(labeled_cases))
    axes.set_xlabel("labeled cases")
    axes.set_ylabel("test Dice, mean over classes (%)")
    axes.set_title("Dice vs labeled cases (mean ± std over seeds; dots: seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path
