"""The output folder of ``advmim prepare``: its manifest and the checks before writing it.

A prepared folder holds the manifest :data:`MANIFEST_NAME`. :func:`check_output_apart` refuses
an output that is an input, lies inside one or contains one; :func:`check_output_replaceable`
lets ``--overwrite`` replace only a folder an earlier prepare made (or an empty one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from advmim_lightning.data.validation import DataValidationError

__all__ = ["MANIFEST_NAME", "check_output_apart", "check_output_replaceable"]

#: The manifest every prepared folder holds; ``--overwrite`` replaces only such a folder.
MANIFEST_NAME = "advmim_prepare.json"
_MADE_BY = "advmim prepare"


def _is_or_lies_in(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it.

    Compared on resolved paths (symlinks, ``..``, relative paths and trailing slashes do not
    hide a match) and, for the parts that exist, on device and inode (another mount of the
    same folder does not either).
    """
    path, folder = path.resolve(), folder.resolve()
    if path == folder or path.is_relative_to(folder):
        return True
    try:
        target = folder.stat()
    except OSError:
        return False
    for candidate in (path, *path.parents):
        try:
            found = candidate.stat()
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def check_output_apart(output: str | Path, inputs: Sequence[tuple[str, str | Path]]) -> None:
    """Refuses an output folder that is an input, lies inside one or contains one.

    The output is written in a temporary folder beside it and replaces it at the end (with
    ``overwrite``), so an output that overlaps an input would write into the raw release or
    delete it. Checked before anything is written, with or without ``overwrite``.

    Args:
        output: The output folder.
        inputs: ``(what, path)`` of each input: the input folder, the split file, every folder
            and file read (``what`` names it in the message, e.g. ``"input folder"``).

    Raises:
        ValueError: Naming the output, the input and how they overlap.
    """
    out = Path(output)
    for what, source in inputs:
        source = Path(source)
        if _is_or_lies_in(out, source):
            how = "is" if out.resolve() == source.resolve() else "lies inside"
        elif _is_or_lies_in(source, out):
            how = "contains"
        else:
            continue
        raise ValueError(
            f"The output folder {_with_resolved(out)} {how} the {what} "
            f"{_with_resolved(source)}; expected an output folder apart from the input (writing "
            "there, and overwriting above all, would change or delete the raw data). Nothing "
            "was written."
        )


def _first_file(folder: Path) -> Path | None:
    """A file inside ``folder`` (sorted walk, the first found), or None when it holds none."""
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        if files:
            return Path(parent) / sorted(files)[0]
    return None


def _is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds the manifest an earlier prepare wrote."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("made_by") == _MADE_BY


def check_output_replaceable(output: str | Path) -> None:
    """Refuses to replace an existing output that no earlier prepare made.

    ``--overwrite`` deletes the output folder before moving the new one into place, so it may
    only hit a folder this command wrote (it holds :data:`MANIFEST_NAME`) or an empty one.

    Args:
        output: The existing output path.

    Raises:
        DataValidationError: Naming the output and a file found in it (or saying it is a
            file), when it is neither.
    """
    out = Path(output)
    if not out.is_dir() or out.is_symlink():
        raise DataValidationError(
            f"Output {out} exists and is not a folder an earlier advmim prepare made (it is a "
            f"{'link' if out.is_symlink() else 'file'}); --overwrite replaces only such a "
            "folder. Nothing was deleted: choose another --output."
        )
    if _is_prepared(out):
        return
    found = _first_file(out)
    if found is None and not any(out.iterdir()):
        return  # an empty folder: nothing to lose
    shown = f"e.g. {found}" if found is not None else f"e.g. {sorted(out.iterdir())[0]}"
    raise DataValidationError(
        f"Output folder {out} was not made by advmim prepare (no {MANIFEST_NAME} in it) and "
        f"holds files ({shown}); --overwrite replaces only a folder an earlier prepare "
        "wrote. Nothing was deleted: move those files away or choose another --output (a "
        "folder made by a prepare older than the manifest: delete it yourself)."
    )


def _with_resolved(path: Path) -> str:
    resolved = path.resolve()
    return str(path) if resolved == path else f"{path} (= {resolved})"
