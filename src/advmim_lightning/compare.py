"""``advmim compare``: methods x labeled cases x seeds on one dataset, one table and one plot.

::

    advmim compare -c configs/quickstart.yaml --methods supervised ctct advmim \\
        --labeled_cases 1 3 7 --seeds 0 1 2 --output runs/compare [--section.key value ...]

For every combination it runs ``advmim fit`` and then ``advmim test`` in its own run folder
``<output>/<method>-l<cases>-s<seed>``; the runs differ only in ``model.method``,
``data.labeled_cases`` and the seed (``seed_everything``, ``data.seed``, ``model.rng_seed``;
``data.split_seed`` and the data stay fixed, so every run sees the same validation and test
cases). Then it writes ``compare.csv``, ``summary.md`` and ``compare.png`` into ``<output>``
(see :mod:`advmim_lightning.compare_report`).

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
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from advmim_lightning.compare_report import (
    read_test_means,
    rows_of_run,
    summary_markdown,
    summary_table,
    write_csv,
    write_plot,
)
from advmim_lightning.method.config import METHOD_DEFAULTS
from advmim_lightning.paths import ensure_writable_folder

__all__ = ["ComparisonRows", "run_comparison"]

DEFAULT_METHODS = ("supervised", "ctct", "advmim")
TEST_CSV = "test_metrics.csv"
LOG_FILE = "compare.log"
JOB_FILE = "compare_job.json"
ERROR_FILE = "compare_error.txt"

#: Settings whose default depends on the method (``None`` resolves to the method's value).
PER_METHOD_SETTINGS = tuple(dict.fromkeys(k for d in METHOD_DEFAULTS.values() for k in d))
#: Which methods use each method-dependent setting (the others ignore or refuse it).
SETTING_USERS: dict[str, tuple[str, ...]] = {
    **{k: tuple(m for m, d in METHOD_DEFAULTS.items() if k in d) for k in PER_METHOD_SETTINGS},
    **dict.fromkeys(
        (
            "loss_variant",
            "discriminator_real",
            "mask_ratio",
            "mask_block_size",
            "discriminator_base_channels",
        ),
        ("advmim",),
    ),
    **dict.fromkeys(("rampup_length", "rampup_interval"), ("advmim", "ctct")),
}
#: What ``compare`` sets per combination: these cannot be given as overrides.
_CONTROLLED = {
    "model.method": "--methods",
    "data.labeled_cases": "--labeled_cases",
    "seed_everything": "--seeds",
    "data.seed": "--seeds",
    "model.rng_seed": "--seeds",
    "run_name": "--output (run folders are named <method>-l<cases>-s<seed>)",
    "runs_dir": "--output",
    "ckpt_path": "--checkpoint (and resumes from last.ckpt by itself)",
}
_SEED_KEYS = ("seed_everything", "data.seed", "model.rng_seed")
#: The subprocess of one combination (the job path is taken out of ``sys.argv``, which
#: LightningCLI would otherwise see beside its ``args``).
_WORKER = (
    "import sys; from advmim_lightning.compare import run_job; sys.exit(run_job(sys.argv.pop(1)))"
)


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


@dataclass(frozen=True)
class _Combination:
    method: str
    labeled_cases: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-l{self.labeled_cases}-s{self.seed}"


def run_comparison(
    config: str | Path | Sequence[str | Path],
    methods: Sequence[str] = DEFAULT_METHODS,
    labeled_cases: Sequence[int] = (1, 3, 7),
    seeds: Sequence[int] = (0, 1, 2),
    output: str | Path = "runs/compare",
    overrides: Sequence[str] = (),
    checkpoint: Literal["best", "last"] = "best",
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

    Returns:
        The rows of ``compare.csv`` (``method``, ``labeled_cases``, ``seed``, ``class``,
        ``metric``, ``value``) of every finished combination, including those finished by an
        earlier call; ``rows.failed`` lists the combinations that failed in this call.

    Raises:
        ValueError: On an unknown method, repeated values, a count below 1, an override of a
            setting the comparison sets itself, or a split file that fixes the labeled cases.
        FileNotFoundError: When a config file does not exist.
        OSError: When ``output`` cannot be written.
    """
    configs = [str(c) for c in ([config] if isinstance(config, str | Path) else config)]
    methods, labeled_cases, seeds = _check_lists(methods, labeled_cases, seeds)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    overrides = [str(w) for w in overrides]
    stated, from_files = _stated_settings(configs, overrides)
    _check_split_file(stated)
    output = ensure_writable_folder(output, "comparison folder (--output)")
    notes = _notes(stated, from_files, methods)
    for note in notes:
        print(f"note: {note}")

    combinations = [
        _Combination(m, n, s) for s in seeds for n in labeled_cases for m in methods
    ]  # a seed at a time: after the first pass every cell of the table has a value
    pending = {c for c in combinations if read_test_means(output / c.name / TEST_CSV) is None}
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
            job = _job(combo, configs, overrides, stated, from_files, output, checkpoint)
            resuming = " (resuming from checkpoints/last.ckpt)" if job["resume"] else ""
            print(f"{prefix} fit + test{resuming} ...", flush=True)
            began = time.monotonic()
            error = _run_job_in_subprocess(job, output / combo.name)
            durations.append(time.monotonic() - began)
            pending.discard(combo)
            if error is None:
                done.append(durations[-1])
                means = read_test_means(output / combo.name / TEST_CSV)
                dice = means["dice"]["mean"] if means else float("nan")
                status = f"done in {_duration(durations[-1])}, test Dice {100 * dice:.1f}%"
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
        means = read_test_means(output / combo.name / TEST_CSV)
        if means is not None:
            rows += rows_of_run(combo.method, combo.labeled_cases, combo.seed, means)
    details = [
        "command: `advmim compare "
        + shlex.join(
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
                *overrides,
            ]
        )
        + "`",
        "tested checkpoint: "
        + ("best validation Dice (`best-*.ckpt`)" if checkpoint == "best" else "`last.ckpt`"),
        *notes,
    ]
    write_csv(rows, output / "compare.csv")
    (output / "summary.md").write_text(
        summary_markdown(rows, methods, labeled_cases, seeds, failed, details)
    )
    written = [output / "compare.csv", output / "summary.md"]
    if rows:
        written.append(write_plot(rows, methods, labeled_cases, output / "compare.png"))
    print()
    print(summary_table(rows, methods, labeled_cases))
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    if not rows:
        print("no combination finished, so there is no plot (compare.png)")
    if failed:
        print(f"{len(failed)} of {total} combination(s) failed (run the command again to retry):")
        for name, error in failed.items():
            print(f"  {name}: {error} (log: {output / name / LOG_FILE})")
    return ComparisonRows(rows, failed, output)


def _check_lists(
    methods: Sequence[str], labeled_cases: Sequence[int], seeds: Sequence[int]
) -> tuple[list[str], list[int], list[int]]:
    methods, labeled_cases, seeds = list(methods), list(labeled_cases), list(seeds)
    unknown = [m for m in methods if m not in METHOD_DEFAULTS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {sorted(METHOD_DEFAULTS)}")
    for name, values in (("methods", methods), ("labeled_cases", labeled_cases), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name} is empty; expected at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} lists a value twice: {values}")
    for name, values in (("labeled_cases", labeled_cases), ("seeds", seeds)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{name} must be integers, got {values}")
    if min(labeled_cases) < 1:
        raise ValueError(f"labeled_cases must be >= 1, got {labeled_cases}")
    return methods, labeled_cases, seeds


def _stated_settings(
    configs: Sequence[str], overrides: Sequence[str]
) -> tuple[dict[str, Any], set[str]]:
    """Dotted settings the config files and the overrides state, and which came from files.

    Returns:
        ``({"model.mask_block_size": 16, ...}, keys stated by the files and not overridden)``.
        Override values stay strings, as typed.

    Raises:
        FileNotFoundError: When a config file does not exist.
        ValueError: When a file is not a YAML mapping, or an override sets what
            ``compare`` sets itself.
    """
    import yaml

    stated: dict[str, Any] = {}
    for config in configs:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(tree, dict):
            kind = type(tree).__name__
            raise ValueError(f"config file {path} holds a {kind}; expected a mapping")
        stated.update(_dotted(tree))
    from_files = set(stated)
    words = list(overrides)
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        key, equals, value = word[2:].partition("=")
        if key in _CONTROLLED:
            raise ValueError(
                f"--{key} is set by compare for every combination; use {_CONTROLLED[key]}"
            )
        if not equals:
            following = words[index + 1] if index + 1 < len(words) else None
            value = None if following is None or following.startswith("--") else following
        stated[key] = value
        from_files.discard(key)
    return stated, from_files


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "class_path" not in value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_split_file(stated: dict[str, Any]) -> None:
    """Refuse a split file that lists the labeled cases: it would win over every count."""
    path = stated.get("data.split_file")
    if not path:
        return
    try:
        split = json.loads(Path(str(path)).read_text())
    except (OSError, ValueError):
        return  # advmim fit reports an unreadable split file with its own message
    if isinstance(split, dict) and split.get("labeled") is not None:
        raise ValueError(
            f"data.split_file {path} lists the labeled cases ('labeled' key), which wins over "
            "data.labeled_cases, so every labeled count would train on the same cases; expected "
            "a split file without 'labeled' (compare sets the count per run)"
        )


def _notes(stated: dict[str, Any], from_files: set[str], methods: Sequence[str]) -> list[str]:
    """One line per stated setting that some compared method does not take as stated."""
    notes = []
    for key in PER_METHOD_SETTINGS:
        dotted = f"model.{key}"
        if dotted in from_files and any(key in METHOD_DEFAULTS[m] for m in methods):
            defaults = ", ".join(
                f"{m} {METHOD_DEFAULTS[m][key]}" for m in methods if key in METHOD_DEFAULTS[m]
            )
            notes.append(
                f"{dotted}={stated[dotted]} from the config is a per-method setting: each method "
                f"uses its own default instead ({defaults}); give --{dotted} to compare to set "
                "it for every method that uses it"
            )
    for key, users in SETTING_USERS.items():
        dotted = f"model.{key}"
        ignoring = [m for m in methods if m not in users]
        if dotted in stated and ignoring:
            notes.append(
                f"{dotted}={stated[dotted]} is used by {' and '.join(users)} only; "
                f"{' and '.join(ignoring)} ignore{'s' if len(ignoring) == 1 else ''} it"
            )
    varied = ("model.method", "data.labeled_cases", *_SEED_KEYS)
    replaced = [f"{key}={stated[key]}" for key in varied if key in stated]
    if replaced:
        notes.append(
            f"{', '.join(replaced)} from the config: replaced in each run by its method, "
            "labeled cases and seed"
        )
    return notes


def _job(
    combo: _Combination,
    configs: Sequence[str],
    overrides: Sequence[str],
    stated: dict[str, Any],
    from_files: set[str],
    output: Path,
    checkpoint: str,
) -> dict[str, Any]:
    """The ``advmim fit`` and ``advmim test`` words of one combination."""
    words = [w for c in configs for w in ("-c", c)] + list(overrides)
    words += ["--model.method", combo.method, "--data.labeled_cases", str(combo.labeled_cases)]
    for key in _SEED_KEYS:
        words += [f"--{key}", str(combo.seed)]
    words += ["--runs_dir", str(output), "--run_name", combo.name]
    for key in PER_METHOD_SETTINGS:  # back to the method's default, or out of its way
        dotted = f"model.{key}"
        unused = key not in METHOD_DEFAULTS[combo.method]
        if dotted in stated and (unused or dotted in from_files):
            words += [f"--{dotted}", "null"]
    last = output / combo.name / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    return {
        "run_dir": str(output / combo.name),
        "fit": ["fit", *words, *(["--ckpt_path", str(last)] if resume else [])],
        "test": ["test", *words, "--wandb_mode", "disabled"],
        "checkpoint": checkpoint,
        "resume": resume,
    }


def _run_job_in_subprocess(job: dict[str, Any], run_dir: Path) -> str | None:
    """Run one combination in a fresh interpreter; its error line, or None on success."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job_path = run_dir / JOB_FILE
    job_path.write_text(json.dumps(job, indent=1))
    error_path = run_dir / ERROR_FILE
    error_path.unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log_path = run_dir / LOG_FILE
    with log_path.open("a") as log:
        log.write(f"\n=== advmim compare, {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(job_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            code = process.wait()
        except KeyboardInterrupt:
            # The terminal's Ctrl-C reaches the child too; let it stop, then go.
            try:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    if code == 0:
        return None
    if error_path.is_file():
        return error_path.read_text().strip() or f"exit status {code}"
    if code < 0:
        return f"killed by signal {-code} (log: {log_path})"
    return f"exit status {code} (log: {log_path})"


def run_job(job_path: str | Path) -> int:
    """Run one combination's ``advmim fit`` then ``advmim test`` in this process.

    The worker that :func:`run_comparison` starts in a subprocess. On failure the error's
    first line goes to ``<run>/compare_error.txt`` (the traceback to the log).

    Args:
        job_path: The ``compare_job.json`` written by the comparison.

    Returns:
        The exit status: 0 when the test result was written, 1 otherwise.
    """
    job = json.loads(Path(job_path).read_text())
    run_dir = Path(job["run_dir"])
    from advmim_lightning.main import main

    try:
        print("$ advmim " + shlex.join(job["fit"]), flush=True)
        main(job["fit"])
        test = [*job["test"], "--ckpt_path", str(_checkpoint_to_test(run_dir, job["checkpoint"]))]
        print("$ advmim " + shlex.join(test), flush=True)
        (run_dir / TEST_CSV).unlink(missing_ok=True)
        main(test)
        if read_test_means(run_dir / TEST_CSV) is None:
            raise RuntimeError(f"advmim test ended without writing {run_dir / TEST_CSV}")
    except SystemExit as stop:
        if stop.code in (0, None):
            return 0 if read_test_means(run_dir / TEST_CSV) is not None else 1
        message = stop.code if isinstance(stop.code, str) else f"exit status {stop.code}"
        _record_error(run_dir, message)
        return 1
    except Exception as err:
        traceback.print_exc()
        _record_error(run_dir, f"{type(err).__name__}: {err}")
        return 1
    return 0


def _record_error(run_dir: Path, message: str) -> None:
    line = next((s.strip() for s in str(message).splitlines() if s.strip()), "unknown error")
    line = line.removeprefix("advmim: error: ")
    print(f"advmim compare: {run_dir.name} failed: {line}", file=sys.stderr, flush=True)
    (run_dir / ERROR_FILE).write_text(line + "\n")


def _checkpoint_to_test(run_dir: Path, which: str) -> Path:
    """The run's ``last.ckpt`` or its single best checkpoint."""
    folder = run_dir / "checkpoints"
    if which == "last":
        last = folder / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"{last} is missing after advmim fit")
        return last
    best = sorted(folder.glob("best-*.ckpt"))
    if not best:
        raise FileNotFoundError(
            f"no best checkpoint (best-*.ckpt) in {folder}: validation never ran, so there is "
            "no best val/dice_mean; validate during training (trainer.val_check_interval) or "
            "test the last checkpoint (--checkpoint last)"
        )
    if len(best) > 1:
        raise ValueError(
            f"{folder} holds {len(best)} best checkpoints ({', '.join(p.name for p in best)}); "
            "expected one: remove the stale ones"
        )
    return best[0]


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
    parser.add_argument("--output", default="runs/compare", help="folder of the runs and tables")
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="checkpoint to test: best val/dice_mean (default, as the papers) or last",
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
        )
    except (ValueError, OSError) as err:
        parser.exit(2, f"advmim compare: error: {err}\n")
    except KeyboardInterrupt:
        print("\nadvmim compare: interrupted; run the same command again to resume", flush=True)
        return 130
    return 1 if rows.failed or not rows else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
