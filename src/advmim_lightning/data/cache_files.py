"""Cache files that check themselves: sizes and checksums written when the cache is made.

The phantom cache (``.npz``) and the NIfTI cache (``.npy`` per volume) are written with a
small manifest (:func:`describe`: each file's size and BLAKE2b checksum). Before a cache is
used, :func:`find_damage` compares the files with it: sizes always (cheap), checksums too
(one streaming read, no memory held), so a truncated, deleted or zeroed file is found and
rebuilt (:func:`warn_rebuilt`) instead of failing every later run with a traceback that names
no file.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["CacheRebuiltWarning", "checksum", "describe", "find_damage", "warn_rebuilt"]

_CHUNK = 1 << 20


class CacheRebuiltWarning(UserWarning):
    """A damaged cache file was found and is rebuilt from its source."""


def checksum(path: Path) -> str:
    """BLAKE2b (128 bits) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``{file name: {"size": bytes, "blake2b": checksum}}`` of freshly written cache files."""
    return {p.name: {"size": p.stat().st_size, "blake2b": checksum(p)} for p in paths}


def find_damage(folder: Path, files: Any, *, content: bool = True) -> tuple[Path, str] | None:
    """The first cache file that does not match its manifest entry, and how.

    Args:
        folder: The folder the files are in.
        files: The manifest's ``{name: {"size", "blake2b"}}`` (anything else is damage).
        content: Whether to compare checksums too (sizes are always compared).

    Returns:
        ``(file, what is wrong)``, or None when every file matches.
    """
    if not isinstance(files, Mapping) or not files:
        return folder, "its manifest lists no files"
    for name, entry in files.items():
        path = folder / str(name)
        if not isinstance(entry, Mapping) or "size" not in entry or "blake2b" not in entry:
            return path, "its manifest entry is malformed"
        try:
            size = path.stat().st_size
        except OSError:
            return path, "it is missing"
        if size != entry["size"]:
            return path, f"it has {size} bytes, expected {entry['size']} (truncated or replaced)"
    if content:
        for name, entry in files.items():
            path = folder / str(name)
            if checksum(path) != entry["blake2b"]:
                return path, "its checksum differs from the one written with it (damaged)"
    return None


def warn_rebuilt(path: Path, why: str, source: str) -> None:
    """Warns that the cache file ``path`` is damaged (``why``) and rebuilt from ``source``."""
    warnings.warn(
        f"cache file {path} is damaged: {why}; rebuilding it from {source}.",
        CacheRebuiltWarning,
        stacklevel=3,
    )
