"""Output folders: checked for writing before a run spends any time, and held by one process.

A run folder ``<runs_dir>/<run_name>/`` holds the resolved config, ``checkpoints/``,
``metrics.csv`` and the loggers' files; an evaluation names its own files after the subcommand
(:func:`run_file_name`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
    "data.cache_dir",
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
