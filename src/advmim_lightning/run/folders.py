"""Output folders: checked for writing before a run spends any time, and held by one process.

A run folder ``<runs_dir>/<run_name>/`` holds the resolved config, ``checkpoints/``,
``metrics.csv`` and the loggers' files; an evaluation names its own files after the subcommand
(:func:`run_file_name`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Lightning's SLURM requeue checkpoints, saved in the run folder (``trainer.default_root_dir``).
REQUEUE_CHECKPOINTS = "hpc_ckpt_*.ckpt"


def ensure_writable_folder(path: str | Path, what: str) -> Path:
    """Create ``path`` (with parents) and prove a file can be written in it.

    Args:
        path: The folder.
        what: What it is for the message, e.g. ``"run folder"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: Naming the folder, what it is for and the system's reason, when it cannot be
            created or written (a file in the way, no permission, a read-only disk).
    """
    folder = Path(path)
    probe = folder / f".advmim-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if err.filename and Path(err.filename) != folder:
            reason += f" ({err.filename})"
        raise OSError(f"cannot write the {what} {folder}: {reason}") from err
    return folder


#: Path settings of a subcommand's config that name a file or folder on this machine; ``~`` in
#: them is expanded once, before anything derives a path from them (:func:`settle_run_paths`).
PATH_SETTINGS = (
    "runs_dir",
    "ckpt_path",
    "trainer.default_root_dir",
    "prediction_writer.output_dir",
    "data.root",
    "data.settings.cache_dir",
    "data.settings.split_file",
)


def settle_run_paths(config: Any) -> None:
    """Expand ``~`` in the path settings and check ``run_name``, in place, once per command.

    Lightning expands ``~`` in some places (the trainer's ``default_root_dir``, a
    ``ModelCheckpoint``'s folder) and not in others (the run folder's lock, the panels), so a
    literal ``~`` would split one run over two folders; every path setting is expanded here
    instead, before the run folder, the lock or the checkpoint are derived from it.

    Args:
        config: One subcommand's parsed config (a jsonargparse ``Namespace``).

    Raises:
        ValueError: When ``run_name`` is not one folder name (see :func:`check_run_name`).
    """
    for key in PATH_SETTINGS:
        value = config.get(key)
        if isinstance(value, (str, Path)) and str(value).startswith("~"):
            config[key] = os.path.expanduser(str(value))
    check_run_name(config.get("run_name"))


def check_run_name(name: Any) -> str:
    """``name`` when it names one folder inside ``runs_dir``.

    Raises:
        ValueError: Naming the value, when it is empty, ``.`` or ``..``, or holds a path
            separator (the run would be written outside ``runs_dir``, or into it itself).
    """
    text = str(name)
    separators = {"/", os.sep, os.altsep or "/"}
    if text in ("", ".", "..") or any(s in text for s in separators) or "\0" in text:
        raise ValueError(
            f"--run_name {text!r} is not a run name: it names one folder inside --runs_dir, "
            "so it must be a non-empty folder name without '/' that is not '.' or '..' "
            "(e.g. advmim, acdc_seed1)"
        )
    return text


@dataclass(frozen=True)
class RunFolder:
    """One run's folder ``<runs_dir>/<name>/``: its checkpoints, its lock and the messages
    that describe it.

    Args:
        runs_dir: The folder that holds one folder per run (``--runs_dir``).
        name: The run's name (``--run_name``), checked by :func:`check_run_name`.
    """

    runs_dir: Path
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))
        check_run_name(self.name)

    @classmethod
    def of(cls, config: Any) -> RunFolder:
        """The run folder a parsed config names (``runs_dir`` and ``run_name``)."""
        return cls(Path(config["runs_dir"]), str(config["run_name"]))

    @property
    def path(self) -> Path:
        return self.runs_dir / self.name

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``, where the run's ``last.ckpt`` and ``best-*.ckpt`` go."""
        return self.path / "checkpoints"

    def checkpoint_files(self, pattern: str = "*.ckpt") -> list[Path]:
        """The files of ``checkpoints/`` that match ``pattern``, sorted (none: no folder)."""
        return sorted(self.checkpoints.glob(pattern)) if self.checkpoints.is_dir() else []

    def resume_candidates(self) -> list[Path]:
        """``checkpoints/last.ckpt`` and the SLURM requeue checkpoints that exist."""
        found = (self.checkpoints / "last.ckpt", *self.path.glob(REQUEUE_CHECKPOINTS))
        return [p for p in found if p.is_file()]

    def make(self) -> Path:
        """Create the folder and prove it is writable (:func:`ensure_writable_folder`)."""
        return ensure_writable_folder(self.path, "run folder (--runs_dir/--run_name)")

    def lock(self, command: str) -> RunFolderLock:
        """Create the folder and hold it for this process (:class:`RunFolderLock`)."""
        self.make()
        return RunFolderLock(self.path, command).acquire()

    def describe_checkpoints(self) -> str:
        """What the run holds, or which other runs of ``runs_dir`` have checkpoints."""
        here = [p.name for p in self.checkpoint_files()]
        if here:
            return f"the run folder {self.path} holds checkpoints/{', checkpoints/'.join(here)}"
        looked = f"the run folder {self.path} has no checkpoint"
        if not self.runs_dir.is_dir():
            return f"{looked}, and the runs folder {self.runs_dir} does not exist"
        runs = sorted(
            p.name
            for p in self.runs_dir.iterdir()
            if p.is_dir() and any(p.glob("checkpoints/*.ckpt"))
        )
        if not runs:
            return f"{looked}, nor has any other run in {self.runs_dir}"
        return f"{looked}; runs with checkpoints in {self.runs_dir}: {some(runs, 10)}"

    def refuse_a_second_run(self) -> None:
        """Refuse a fit from initial weights into this folder when it holds checkpoints.

        It would append a second training curve to ``metrics.csv``, replace ``config.yaml``
        and leave the old ``last.ckpt`` beside the new run's ``last-v1.ckpt``, so that
        ``--ckpt_path last`` would then pick the old run's weights.

        Raises:
            ValueError: Naming the folder, its checkpoints and the ways out.
        """
        found = [p.name for p in self.checkpoint_files()]
        if found:
            raise ValueError(
                f"the run folder {self.path} already holds a run (checkpoints/"
                f"{', checkpoints/'.join(found)}); a new fit would mix two runs in one record: "
                "resume it with --ckpt_path last, or choose another --run_name (or delete the "
                "folder to train it again)"
            )


def some(names: list[str], shown: int = 4) -> str:
    """The first ``shown`` names, and how many more, for messages (``none`` when empty)."""
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def run_file_name(subcommand: str, name: str) -> str:
    """``name`` for ``fit``, ``<subcommand>_<name>`` for an evaluation (``test_config.yaml``)."""
    return name if subcommand == "fit" else f"{subcommand}_{name}"


#: The lock file inside a run folder (see :class:`RunFolderLock`).
LOCK_FILE = ".advmim.lock"


class RunFolderInUseError(OSError):
    """Another live process holds the run folder (see :class:`RunFolderLock`)."""


class RunFolderLock:
    """Hold a run folder for one process at a time.

    An exclusive ``fcntl.flock`` on ``<folder>/.advmim.lock``, which holds the holder's PID
    and command. The operating system drops the lock when the holder exits in any way (also
    ``SIGKILL`` or a crash), so a dead process never leaves the folder blocked; the file itself
    may stay behind and means nothing while no process holds its lock.

    Args:
        folder: The run folder (must exist).
        command: What the holder runs, for the message another process sees (e.g.
            ``"advmim fit"``).
    """

    def __init__(self, folder: str | Path, command: str = "advmim") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self._handle: Any = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._handle is not None

    @property
    def removed(self) -> bool:
        """Whether the lock file held was removed or replaced since: its folder was deleted."""
        if self._handle is None:
            return False
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        held = os.fstat(self._handle.fileno())
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def acquire(self) -> RunFolderLock:
        """Take the lock at once or fail; returns ``self``.

        Raises:
            RunFolderInUseError: Naming the folder, the lock file and the holder's PID and
                command, when another process (or another lock object of this process) holds it.
            OSError: When the lock file cannot be opened.
        """
        import fcntl

        if self._handle is not None:
            return self
        handle = open(self.path, "a+")  # kept open while the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process whose PID is not written yet"
            handle.close()
            raise RunFolderInUseError(
                f"the run folder {self.folder} is in use by {holder} (lock {self.path}); one "
                "process at a time writes a run: wait for it to end, or choose another "
                "--run_name"
            ) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({self.command})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (nothing happens when it is not held)."""
        import fcntl

        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.seek(0)
            handle.truncate()  # no stale PID for the next reader
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def launching_process() -> bool:
    """Whether this process is the one the user started, not a DDP worker launched by it.

    Lightning's DDP launcher starts the other ranks as copies of the command with
    ``LOCAL_RANK`` (and ``NODE_RANK`` on other nodes) set; ``torchrun`` and SLURM set ``RANK``
    / ``SLURM_PROCID``. Only global rank 0, or a process outside any launcher, returns True.
    """
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key]) == 0 and os.environ.get("NODE_RANK", "0") == "0"
    return os.environ.get("NODE_RANK", "0") == "0"
