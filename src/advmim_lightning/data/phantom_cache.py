"""The phantom's on-disk cache: one ``.npz`` per set of generator arguments.

The file holds the stacked images, labels and spacings of every case. A manifest
(``<file>.json``: size and checksum, :mod:`~advmim_lightning.data.cache_files`) is written
after it and marks it complete, so a cache cut short, truncated, zeroed or left without its
manifest is found, named in a
:class:`~advmim_lightning.data.cache_files.CacheRebuiltWarning` and generated again.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from advmim_lightning.data.cache_files import describe, find_damage, warn_rebuilt

__all__ = ["PhantomArrays", "phantom_cache_path", "read_phantom_cache", "write_phantom_cache"]

#: ``(images, labels, spacings)``: ``N x H x W x D`` float32, ``N x H x W x D`` labels and
#: ``N x 3`` float64 spacings.
PhantomArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def phantom_cache_path(
    cache_dir: Path,
    *,
    version: int,
    num_cases: int,
    num_slices: int,
    size: int,
    seed: int,
    heart_scale: float,
    domain: str,
    domain_strength: float,
) -> Path:
    """The cache file of one phantom. Arguments at their defaults (heart scale 1, the source
    domain, strength 1) add nothing to the name, so the default phantom keeps the file name it
    always had; ``version`` is the generator's, raised whenever its output changes."""
    key = f"v{version}-{num_cases}-{num_slices}-{size}-{seed}"
    if heart_scale != 1.0:
        key += f"-h{heart_scale:g}"
    if domain != "source":
        key += f"-{domain}"
    if domain_strength != 1.0:
        key += f"-s{domain_strength:g}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir / f"phantom_{key}_{digest}.npz"


def _manifest_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def write_phantom_cache(path: Path, arrays: PhantomArrays) -> None:
    """Writes the cache file, then its manifest, each through a temporary file and a rename,
    so an interrupted write leaves either nothing or a file that :func:`read_phantom_cache`
    refuses."""
    images, labels, spacings = arrays
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels, spacings=spacings)
    manifest = {"files": {path.name: describe([tmp])[tmp.name]}}
    tmp.replace(path)
    tmp_manifest = path.with_suffix(".tmp.json")
    tmp_manifest.write_text(json.dumps(manifest))
    tmp_manifest.replace(_manifest_path(path))


def read_phantom_cache(path: Path, num_cases: int) -> PhantomArrays | None:
    """The cached arrays of ``num_cases`` cases, after checking the file against its manifest.

    Returns:
        The arrays; None when there is no cache yet, or, with a ``CacheRebuiltWarning`` naming
        the file and what is wrong with it, when it is damaged or holds too few cases.
    """
    manifest = _manifest_path(path)
    if not path.is_file() and not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text()).get("files")
        damage = find_damage(path.parent, files)
    except FileNotFoundError:
        damage = (path, f"it has no manifest {manifest.name} (written before manifests, or cut)")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        damage = (manifest, f"its manifest is unreadable ({type(err).__name__}: {err})")
    if damage is None:
        try:
            with np.load(path) as data:
                arrays = (data["images"], data["labels"], data["spacings"])
            found = min(len(a) for a in arrays)
            if found >= num_cases:
                return arrays
            damage = (path, f"it holds {found} cases, expected {num_cases}")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            damage = (path, f"it is unreadable ({type(err).__name__}: {err})")
    warn_rebuilt(damage[0], damage[1], "the phantom generator")
    return None
