"""``advmim compare``: methods x labeled cases x seeds on one dataset, one table and one plot.

::

    advmim compare -c configs/quickstart.yaml --methods supervised ctct advmim \\
        --labeled_cases 1 3 7 --seeds 0 1 2 --networks cnn transformer \\
        --output runs/compare [--section.key value ...]

For every combination it runs ``advmim fit`` and then ``advmim test`` once per network of
``--networks`` (``model.eval_network``: ``cnn``, ``transformer``, ``ensemble``; each kept as
``test_metrics_<network>.csv``) in its own run folder
``<output>/<method>-l<cases>-s<seed>``; the runs differ only in ``model.method``,
``data.labeled_cases`` and the seed (``seed_everything``, ``data.seed``, ``model.rng_seed``;
``data.split_seed`` and the data stay fixed, so every run sees the same validation and test
cases). Then it writes ``compare.csv``, ``summary.md`` (one column set per network) and
``compare.png`` (a line style per network) into ``<output>`` (see
:mod:`advmim_lightning.commands.compare_report`).

**A second, unlabeled source** is an override like any other data setting, so one command
runs a domain-gap study: ``--data.unlabeled_layout phantom --data.eval_source second``
trains on the labeled source phantom with the unlabeled target phantom and tests on the
target (``docs/domain-adaptation.md``).

**Per-method settings.** The settings whose default depends on the method
(:data:`~advmim_lightning.method.config.METHOD_DEFAULTS`: ``lr``, ``grad_clip_norm``, the loss
weights) come from each method's defaults: a value a config *file* states for them (written for the
config's own method) is dropped with a note; a ``--model.key value`` given to ``compare``
itself applies to every method that uses it. A setting a method does not use (the mask block
size for CTCT, the adversarial weight for the supervised baseline) is left out of that
method's runs with a note instead of failing them.

**Resuming.** A combination whose ``test_metrics.csv`` is complete is skipped; one with a
``checkpoints/last.ckpt`` and no test result resumes from it; a failing one is recorded
(``summary.md``, the printed report, ``<run>/compare_error.txt``) and the others go on. The
exit status is 1 when any failed. Run the same command again to resume or retry.

**Same settings for every run.** Each combination records the settings it is trained with
(:func:`~advmim_lightning.commands.compare_plan.combination_settings`) in
``<run>/compare_settings.json``.
A later call whose settings differ for a combination that has a run already (finished or not)
is refused, naming the combination, the setting and both values, so that runs of other
settings are never pooled into one table; ``--retrain`` (``retrain=True``) deletes those run
folders and trains them again. ``compare.csv``, ``summary.md`` and ``compare.png`` are listed in
``compare_manifest.json``; such a file that ``compare`` did not write is not replaced.

**Stopping.** Each combination runs in a child interpreter that ends with the comparison:
Ctrl-C or SIGTERM stops the child first, and on Linux the child gets SIGTERM when the
comparison ends in any way (also ``kill -9``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from advmim_lightning.commands.compare_jobs import (
    ERROR_FILE,
    LOG_FILE,
    SETTINGS_FILE,
    CompareTerminated,
    read_settings,
    run_job_in_subprocess,
    write_settings,
)
from advmim_lightning.commands.compare_plan import (
    DEFAULT_METHODS,
    Combination,
    check_lists,
    check_split_file,
    combination_job,
    combination_settings,
    notes_on_settings,
    settings_conflicts,
    stated_settings,
)
from advmim_lightning.commands.compare_report import (
    NETWORKS,
    check_report_files,
    read_network_means,
    record_report_files,
    rows_of_run,
    summary_markdown,
    summary_table,
    write_csv,
    write_plot,
)
from advmim_lightning.method.config import METHOD_DEFAULTS
from advmim_lightning.run.folders import ensure_writable_folder

__all__ = ["ComparisonRows", "main", "run_comparison"]

DEFAULT_NETWORKS = ("cnn", "transformer")


class ComparisonRows(list):
    """The rows of ``compare.csv`` (dicts), plus what failed and where everything went.

    Attributes:
        failed: Run name -> one-line error of every combination that failed in this call.
        output: The comparison folder.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], failed: dict[str, str], output: Path):
        super().__init__(rows)
        self.failed = failed
        self.output = output


def run_comparison(
    config: str | Path | Sequence[str | Path],
    methods: Sequence[str] = DEFAULT_METHODS,
    labeled_cases: Sequence[int] = (1, 3, 7),
    seeds: Sequence[int] = (0, 1, 2),
    output: str | Path = "runs/compare",
    overrides: Sequence[str] = (),
    checkpoint: Literal["best", "last"] = "best",
    retrain: bool = False,
    networks: Sequence[str] = DEFAULT_NETWORKS,
) -> ComparisonRows:
    """Train and test every (method, labeled cases, seed) and tabulate the test scores.

    Each combination runs in a subprocess of its own (``advmim fit`` then ``advmim test``,
    called in that process): a crash, a NaN stop or memory exhaustion ends only that
    combination; seeds, torch's global state (threads, deterministic flags, compile caches,
    CUDA memory) and logging cannot leak from one run into the next; and a combination killed
    with the whole command resumes from its ``last.ckpt`` exactly like a killed ``advmim fit``.
    It costs one interpreter start (a few seconds) per combination. Its console output goes to
    ``<output>/<run>/compare.log``.

    Args:
        config: The ``-c`` config file(s) of ``advmim fit``, composed left to right.
        methods: Methods to compare (``supervised``, ``ctct``, ``advmim``).
        labeled_cases: Labeled-cases counts (``data.labeled_cases``).
        seeds: Seeds; each sets ``seed_everything``, ``data.seed`` and ``model.rng_seed``.
        output: Folder of the run folders and of ``compare.csv``, ``summary.md``,
            ``compare.png``.
        overrides: Further ``advmim fit`` words, e.g. ``["--model.max_iterations", "2000"]``,
            given to every combination (and to its ``advmim test``).
        checkpoint: The checkpoint each combination is tested with: ``"best"`` (the best
            ``val/dice_mean``, as SSL4MIS, CTCT and AdvMIM evaluate) or ``"last"``.
        retrain: Delete and train again the combinations whose recorded settings
            (``compare_settings.json``) differ from this call's (off: refuse).
        networks: The networks each combination's test scores (``cnn``, ``transformer``,
            ``ensemble``), one ``advmim test`` each.

    Returns:
        The rows of ``compare.csv`` (``method``, ``network``, ``labeled_cases``, ``seed``,
        ``class``, ``metric``, ``value``) of every finished combination, including those
        finished by an earlier call; ``rows.failed`` lists the combinations that failed in
        this call.

    Raises:
        ValueError: On an unknown method, repeated values, a count below 1, an override of a
            setting the comparison sets itself, a split file that fixes the labeled cases, a
            combination recorded with other settings (unless ``retrain``), or a
            ``compare.csv`` / ``summary.md`` / ``compare.png`` that compare did not write.
        FileNotFoundError: When a config file does not exist.
        OSError: When ``output`` cannot be written.
    """
    configs = [str(c) for c in ([config] if isinstance(config, str | Path) else config)]
    methods, labeled_cases, seeds = check_lists(methods, labeled_cases, seeds)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    networks = list(networks)
    unknown = [n for n in networks if n not in NETWORKS]
    if not networks or unknown or len(set(networks)) != len(networks):
        raise ValueError(f"networks must be distinct values among {list(NETWORKS)}, got {networks}")
    overrides = [str(w) for w in overrides]
    stated, from_files = stated_settings(configs, overrides)
    check_split_file(stated)
    output = ensure_writable_folder(output, "comparison folder (--output)")
    notes = notes_on_settings(stated, from_files, methods)
    for note in notes:
        print(f"note: {note}")

    check_report_files(output)
    command = "advmim compare " + shlex.join(
        [
            *(w for c in configs for w in ("-c", c)),
            "--methods",
            *methods,
            "--labeled_cases",
            *map(str, labeled_cases),
            "--seeds",
            *map(str, seeds),
            "--output",
            str(output),
            "--checkpoint",
            checkpoint,
            "--networks",
            *networks,
            *overrides,
        ]
    )

    combinations = [
        Combination(m, n, s) for s in seeds for n in labeled_cases for m in methods
    ]  # a seed at a time: after the first pass every cell of the table has a value
    settings = {c: combination_settings(c, stated, from_files, checkpoint) for c in combinations}
    _refuse_or_retrain_other_settings(combinations, settings, output, retrain)
    pending = {c for c in combinations if read_network_means(output / c.name, networks) is None}
    for combo in combinations:
        if combo not in pending:  # finished: an error file left from before is stale
            (output / combo.name / ERROR_FILE).unlink(missing_ok=True)
    unknown = [
        c.name
        for c in combinations
        if c not in pending and not (output / c.name / SETTINGS_FILE).is_file()
    ]
    if unknown:
        print(
            f"note: {', '.join(unknown)} finished without a record of their settings "
            f"({SETTINGS_FILE}, written since this check exists); they are pooled unchecked"
        )
    durations: list[float] = []  # of this call's runs; the finished ones estimate the rest
    done: list[float] = []
    failed: dict[str, str] = {}
    start = time.monotonic()
    total = len(combinations)
    for k, combo in enumerate(combinations, 1):
        prefix = f"[{k}/{total}] {combo.name}:"
        if combo not in pending:
            status = "finished earlier, skipped"
        else:
            job = combination_job(
                combo, configs, overrides, stated, from_files, output, checkpoint, networks
            )
            write_settings(output / combo.name, settings[combo], command)
            resuming = " (resuming from checkpoints/last.ckpt)" if job["resume"] else ""
            print(f"{prefix} fit + test{resuming} ...", flush=True)
            began = time.monotonic()
            error = run_job_in_subprocess(job, output / combo.name)
            durations.append(time.monotonic() - began)
            pending.discard(combo)
            if error is None:
                done.append(durations[-1])
                scored = read_network_means(output / combo.name, networks) or {}
                dice = ", ".join(
                    f"{n} {100 * scored[n]['dice']['mean']:.1f}%" for n in networks if n in scored
                )
                status = f"done in {_duration(durations[-1])}, test Dice {dice}"
            else:
                failed[combo.name] = error
                status = f"FAILED after {_duration(durations[-1])}: {error}"
        elapsed = time.monotonic() - start
        if not pending:
            left = "nothing left"
        elif durations:
            typical = done or durations  # a quick failure says little about a full run
            left = f"about {_duration(sum(typical) / len(typical) * len(pending))} left"
        else:
            left = "time left unknown"
        print(f"{prefix} {status} | elapsed {_duration(elapsed)}, {left}", flush=True)

    rows = []
    for combo in combinations:
        scored = read_network_means(output / combo.name, networks)
        for network, means in (scored or {}).items():
            rows += rows_of_run(combo.method, combo.labeled_cases, combo.seed, means, network)
    details = [
        f"command: `{command}`",
        "tested checkpoint: "
        + ("best validation Dice (`best-*.ckpt`)" if checkpoint == "best" else "`last.ckpt`"),
        *notes,
    ]
    finished = {c.name for c in combinations if read_network_means(output / c.name, networks)}
    failed = {name: error for name, error in failed.items() if name not in finished}
    write_csv(rows, output / "compare.csv")
    (output / "summary.md").write_text(
        summary_markdown(rows, methods, labeled_cases, seeds, failed, details, networks)
    )
    written = [output / "compare.csv", output / "summary.md"]
    if rows:
        plot = output / "compare.png"
        written.append(write_plot(rows, methods, labeled_cases, plot, networks))
    record_report_files(output, written)
    print()
    print(summary_table(rows, methods, labeled_cases, networks))
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    if not rows:
        print("no combination finished, so there is no plot (compare.png)")
    if failed:
        print(f"{len(failed)} of {total} combination(s) failed (run the command again to retry):")
        for name, error in failed.items():
            print(f"  {name}: {error} (log: {output / name / LOG_FILE})")
    return ComparisonRows(rows, failed, output)


def _refuse_or_retrain_other_settings(
    combinations: Sequence[Combination],
    settings: dict[Combination, dict[str, Any]],
    output: Path,
    retrain: bool,
) -> None:
    """Refuse (or, with ``retrain``, delete) the runs recorded with other settings."""
    differing: dict[Combination, list[tuple[str, Any, Any]]] = {}
    for combo in combinations:
        recorded = read_settings(output / combo.name)
        if recorded is not None:
            conflicts = settings_conflicts(recorded, settings[combo])
            if conflicts:
                differing[combo] = conflicts
    if not differing:
        return
    if retrain:
        for combo in differing:
            print(f"note: {combo.name} was trained with other settings; training it again")
            shutil.rmtree(output / combo.name)
        return
    combo, conflicts = next(iter(differing.items()))
    shown = "; ".join(
        f"{key} {_shown(old)} there, {_shown(new)} here" for key, old, new in conflicts
    )
    others = [c.name for c in differing if c != combo]
    more = f" (and {len(others)} more combination(s): {', '.join(others)})" if others else ""
    raise ValueError(
        f"the combination {combo.name} was trained with other settings than this command "
        f"gives ({output / combo.name / SETTINGS_FILE}): {shown}{more}; its results would be "
        "pooled with runs of other settings: give the settings it was trained with, choose "
        "another --output, or train the differing combinations again with --retrain (their "
        "run folders are deleted)"
    )


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def main(argv: list[str] | None = None) -> int:
    """``advmim compare -c CONFIG [--methods ...] [--labeled_cases ...] [--seeds ...] ...``.

    Returns:
        0 when every combination finished, 1 when any failed or none finished, 2 on bad
        arguments.
    """
    parser = argparse.ArgumentParser(
        prog="advmim compare",
        allow_abbrev=False,
        description=(
            "Train (advmim fit) and test (advmim test) every method x labeled cases x seed in "
            "<output>/<method>-l<cases>-s<seed>, then write compare.csv, summary.md and "
            "compare.png. Finished combinations are skipped and unfinished ones resume, so "
            "run the same command again after an interruption. Any other --section.key value "
            "is passed to every fit and test, as for advmim fit."
        ),
    )
    parser.add_argument(
        "-c", "--config", action="append", required=True, help="config file(s), as for fit"
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=sorted(METHOD_DEFAULTS)
    )
    parser.add_argument("--labeled_cases", nargs="+", type=int, default=[1, 3, 7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--networks",
        nargs="+",
        default=list(DEFAULT_NETWORKS),
        choices=list(NETWORKS),
        help="networks each combination's test scores (one column set each in summary.md)",
    )
    parser.add_argument("--output", default="runs/compare", help="folder of the runs and tables")
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="checkpoint to test: best val/dice_mean (default, as the papers) or last",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train again (deleting their run folders) the combinations whose recorded "
        "settings differ from this command's (off: refuse)",
    )
    args, overrides = parser.parse_known_args(argv)
    stray = [w for w in overrides[:1] if not w.startswith("--")]
    if stray:
        parser.error(f"unexpected {stray[0]!r}; overrides look like --section.key value")
    try:
        rows = run_comparison(
            args.config,
            methods=args.methods,
            labeled_cases=args.labeled_cases,
            seeds=args.seeds,
            output=args.output,
            overrides=overrides,
            checkpoint=args.checkpoint,
            retrain=args.retrain,
            networks=args.networks,
        )
    except (ValueError, OSError) as err:
        parser.exit(2, f"advmim compare: error: {err}\n")
    except CompareTerminated:
        print("\nadvmim compare: terminated; run the same command again to resume", flush=True)
        return 143
    except KeyboardInterrupt:
        print("\nadvmim compare: interrupted; run the same command again to resume", flush=True)
        return 130
    return 1 if rows.failed or not rows else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
