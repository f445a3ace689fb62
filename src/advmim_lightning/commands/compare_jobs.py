"""One combination of ``advmim compare``, run in an interpreter of its own.

:func:`run_job_in_subprocess` writes the combination's ``compare_job.json`` and starts a fresh
Python on it; there :func:`run_job` runs ``advmim fit`` then ``advmim test`` once per scored network
(``test_metrics_<network>.csv``) and records a
failure's first line in ``<run>/compare_error.txt`` (removed again when the combination
starts or finishes). The child dies with the comparison: on Linux the kernel sends it SIGTERM
when its parent ends in any way (``PR_SET_PDEATHSIG``), and the parent stops it on Ctrl-C and
SIGTERM. :func:`write_settings` / :func:`read_settings` keep the settings a combination was
trained with (``<run>/compare_settings.json``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from advmim_lightning.commands.compare_report import (
    network_csv,
    read_network_means,
    read_test_means,
)

TEST_CSV = "test_metrics.csv"
LOG_FILE = "compare.log"
JOB_FILE = "compare_job.json"
ERROR_FILE = "compare_error.txt"
SETTINGS_FILE = "compare_settings.json"
_SETTINGS_FORMAT = "advmim-compare-settings"
#: The subprocess of one combination (the job path is taken out of ``sys.argv``, which
#: LightningCLI would otherwise see beside its ``args``).
_WORKER = (
    "import sys; from advmim_lightning.commands.compare_jobs import run_job; "
    "sys.exit(run_job(sys.argv.pop(1)))"
)


class CompareTerminated(KeyboardInterrupt):
    """The comparison received SIGTERM while a combination ran (the child was stopped)."""


def write_settings(run_dir: Path, settings: dict[str, Any], command: str) -> Path:
    """Record the settings a combination is trained with (``<run>/compare_settings.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SETTINGS_FILE
    record = {"format": _SETTINGS_FORMAT, "settings": settings, "command": command}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_settings(run_dir: Path) -> dict[str, Any] | None:
    """The recorded settings of a combination, or None when it has no record.

    Raises:
        ValueError: Naming the file, when it is not a settings record of ``advmim compare``.
    """
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable settings record of advmim compare ({err}); expected the "
            "JSON it writes: remove the file to accept the run as it is, or the run folder to "
            "train it again"
        ) from err
    if not isinstance(record, dict) or record.get("format") != _SETTINGS_FORMAT:
        raise ValueError(
            f"{path} is not a settings record of advmim compare (no format "
            f"{_SETTINGS_FORMAT!r}); remove the file to accept the run as it is, or the run "
            "folder to train it again"
        )
    return dict(record.get("settings") or {})


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` ends (Linux; else nothing)."""

    prctl = None
    if sys.platform.startswith("linux"):
        try:  # looked up here, before the fork
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def preexec() -> None:
        if prctl is None:
            return
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent ended before the request: end now
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _stop(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the child and wait for it (30 s), then kill it."""
    try:
        process.send_signal(sig)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except OSError:  # already gone
        pass


def run_job_in_subprocess(job: dict[str, Any], run_dir: Path) -> str | None:
    """Run one combination in a fresh interpreter; its error line, or None on success.

    The combination succeeded when the test result of every network in ``job["networks"]`` is
    complete (a stale error file is then removed). Ctrl-C or SIGTERM to this process stops
    the child first (SIGINT / SIGTERM, then SIGKILL after 30 s) and is raised again
    (SIGTERM as :class:`CompareTerminated`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    job_path = run_dir / JOB_FILE
    job_path.write_text(json.dumps(job, indent=1))
    error_path = run_dir / ERROR_FILE
    error_path.unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parents[2])
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
            preexec_fn=_die_with_parent(os.getpid()),
        )
        code = _wait(process)
    if read_network_means(run_dir, job["networks"]) is not None:
        error_path.unlink(missing_ok=True)
        return None
    if error_path.is_file():
        return error_path.read_text().strip() or f"exit status {code}"
    if code == 0:
        tables = ", ".join(network_csv(n) for n in job["networks"])
        return f"exit status 0 without complete {tables} (log: {log_path})"
    if code < 0:
        return f"killed by signal {-code} (log: {log_path})"
    return f"exit status {code} (log: {log_path})"


def _wait(process: subprocess.Popen) -> int:
    """The child's exit status; on Ctrl-C or SIGTERM here, stop it and raise."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise CompareTerminated

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: no handler (the child still dies with us)
        pass
    try:
        return process.wait()
    except CompareTerminated:
        _stop(process, signal.SIGTERM)
        raise
    except BaseException:
        # The terminal's Ctrl-C reaches the child too; let it stop, then go.
        _stop(process, signal.SIGINT)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_job(job_path: str | Path) -> int:
    """Run one combination's ``advmim fit`` then, per network, ``advmim test`` in this process.

    The worker that :func:`run_comparison` starts in a subprocess. Each network's test
    (``--model.eval_network``) writes ``test_metrics.csv``, kept as
    ``test_metrics_<network>.csv``. On failure the error's first line goes to
    ``<run>/compare_error.txt`` (the traceback to the log).

    Args:
        job_path: The ``compare_job.json`` written by the comparison.

    Returns:
        The exit status: 0 when the test result was written, 1 otherwise.
    """
    job = json.loads(Path(job_path).read_text())
    run_dir = Path(job["run_dir"])
    networks = job["networks"]
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    from advmim_lightning.run.main import main

    try:
        print("$ advmim " + shlex.join(job["fit"]), flush=True)
        main(job["fit"])
        checkpoint = str(_checkpoint_to_test(run_dir, job["checkpoint"]))
        for network in networks:
            test = [*job["test"], "--model.eval_network", network, "--ckpt_path", checkpoint]
            print("$ advmim " + shlex.join(test), flush=True)
            (run_dir / TEST_CSV).unlink(missing_ok=True)
            main(test)
            if read_test_means(run_dir / TEST_CSV) is None:
                raise RuntimeError(f"advmim test ended without writing {run_dir / TEST_CSV}")
            (run_dir / TEST_CSV).replace(run_dir / network_csv(network))
    except SystemExit as stop:
        if stop.code in (0, None):
            return 0 if read_network_means(run_dir, networks) is not None else 1
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
