"""Output folders: checked for writing before a run spends any time."""

from __future__ import annotations

import os
from pathlib import Path


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
