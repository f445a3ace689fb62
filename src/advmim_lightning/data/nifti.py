"""The MSD / nnU-Net v2 folder layout (NIfTI volumes sliced to 2D).

::

    root/
      dataset.json          # "labels", "channel_names" (or MSD "modality"), "file_ending"
      imagesTr/<case>_0000.nii.gz [, <case>_0001.nii.gz, ...]
      labelsTr/<case>.nii.gz       # images without a label file are unlabeled
      imagesTs/<case>_0000.nii.gz  # optional test set
      labelsTs/<case>.nii.gz       # optional test labels

- ``labels`` may be nnU-Net v2 style (``{"background": 0, "LV": 1}``) or MSD style
  (``{"0": "background", "1": "LV"}``); the values must be ``0 .. num_classes - 1``.
  Region-based labels (lists) are refused.
- Several channels are supported end to end: channel files ``_0000`` .. ``_{C-1}`` of a case
  become the ``C`` input channels (``in_channels`` of the data module follows). MSD files
  without a channel suffix are accepted for single-channel datasets; 4D MSD images are refused
  (split them into channel files first).
- Each label, and each channel file after ``_0000``, must lie on the voxel grid of the image's
  ``_0000`` file: same shape, and spacing, origin and direction equal within the tolerance of
  :func:`~advmim_lightning.data.validation.check_same_geometry` (as nnU-Net's dataset check);
  a mirrored or shifted affine is refused naming the file and both values.
- Volumes are sliced along ``slice_axis`` of the array as stored (default: per case, the axis
  with the coarsest spacing; ties go to the last axis). The spacing (from the header) and the
  affine are kept so metrics can be in mm and predictions written back with
  ``np.moveaxis(pred, 0, slice_axis)`` and the original affine.
- Validation is a seeded fraction of the labeled training cases unless a split file says
  otherwise; ``imagesTs`` (with ``labelsTs``) is the test set and, by default, the predict set
  (labels optional there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from advmim_lightning.data.arguments import check_root
from advmim_lightning.data.cache_files import describe, find_damage, warn_rebuilt
from advmim_lightning.data.cases import CaseSplit, read_split_file, resolve_case_split
from advmim_lightning.data.nifti_files import (
    coarsest_axis,
    read_dataset_json,
    read_nifti,
)
from advmim_lightning.data.settings import SourceSettings
from advmim_lightning.data.source import DataSource, EvalSplit, TrainingPools, pools_from_volumes
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import (
    DataValidationError,
    check_finite,
    check_label_values,
    check_same_geometry,
)

__all__ = ["NiftiSource", "read_dataset_json", "read_nifti"]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# 2: entries are written only after the geometry checks; 3: the entry's .json lists the size
# and checksum of its .npy files (checked before use, a damaged entry is rebuilt)
_CACHE_VERSION = 3


class NiftiSource(DataSource):
    """Reads the MSD / nnU-Net v2 layout (see the module docstring): ``layout="nifti"``.

    Args:
        root: Dataset root (``~`` is expanded).
        settings: The shared :class:`~advmim_lightning.data.settings.SourceSettings`; NIfTI
            uses every field but ``test_fraction`` (``imagesTs`` is the test set):
            ``slice_axis`` (None: per case, the axis with the coarsest spacing),
            ``cache_dir`` (decoded volumes as memory-mapped ``.npy``, checked against their
            manifest when read; None keeps them in memory), ``split_file``, ``split_seed``,
            ``val_fraction`` (of the labeled training cases), ``case_pattern`` (None: the
            whole case name) and the normalisation.

    Raises:
        ValueError: On an empty ``root``.
        DataValidationError: At :meth:`open`, if ``root`` is not a folder, ``dataset.json`` is
            invalid or the files do not match it (names, channel files, labels without images).
    """

    layout = "nifti"

    def __init__(self, root: str, settings: SourceSettings | None = None) -> None:
        self.root = check_root(root, self.layout)
        super().__init__(settings)
        self._scan: dict[str, dict[str, tuple[list[Path], Path | None]]] | None = None

    def open(self) -> None:
        """Reads ``dataset.json`` and checks the file listing against it.

        The listing is checked now (cheap), so that files that do not match ``dataset.json``
        (a missing channel file, say) stop a run as a data error before any network is built
        for ``in_channels``.
        """
        self.path = self._open_root(self.root, "NIfTI", "dataset.json and imagesTr/")
        self.class_names, self.channel_names, self.file_ending = read_dataset_json(
            self.path, self.num_classes
        )
        self.in_channels = len(self.channel_names)
        self.cases()

    def missing_cases_hint(self, which: EvalSplit) -> str:
        if which == "val":
            return f"val_fraction={self.settings.val_fraction}"
        return "imagesTs/ images (with labelsTs/ for testing) or a 'test' list in the split file"

    # ----------------------------------------------------------------------------- listing
    def _scan_folder(
        self, images: str, labels: str | None
    ) -> dict[str, tuple[list[Path], Path | None]]:
        """``{case: (channel files, label file or None)}`` of an image folder (``labels``:
        its label folder, or None for images without labels)."""
        folder = self.path / images
        if not folder.is_dir():
            return {}
        ending, channels = self.file_ending, self.in_channels
        found: dict[str, dict[int, Path]] = {}
        for f in sorted(folder.iterdir()):
            if not f.name.endswith(ending) or f.name.startswith("."):
                continue
            stem = f.name[: -len(ending)]
            m = _CHANNEL_SUFFIX.match(stem)
            if m:
                case, channel = m.group("case"), int(m.group("channel"))
            elif channels == 1:
                case, channel = stem, 0
            else:
                raise DataValidationError(
                    f"{f}: no channel suffix; expected <case>_0000{ending} .. "
                    f"<case>_{channels - 1:04d}{ending} for the {channels} channels of "
                    "dataset.json."
                )
            if channel >= channels:
                raise DataValidationError(
                    f"{f}: channel {channel}; expected channels 0 .. {channels - 1} "
                    f"(dataset.json lists {channels})."
                )
            if channel in found.setdefault(case, {}):
                raise DataValidationError(
                    f"{f}: duplicate case id {case!r} (also {found[case][channel]}); expected one "
                    "file per case and channel."
                )
            found[case][channel] = f
        missing = [
            (case, folder / f"{case}_{c:04d}{ending}")
            for case, files in found.items()
            for c in range(channels)
            if c not in files
        ]
        if missing:
            case = missing[0][0]
            shown = ", ".join(str(path) for _, path in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataValidationError(
                f"Missing image file(s) {shown}{more}: {self.path / 'dataset.json'} declares "
                f"{channels} channels {self.channel_names}, but case {case!r} has channels "
                f"{sorted(found[case])}; expected <case>_0000{ending} .. "
                f"<case>_{channels - 1:04d}{ending} for every case (or fix 'channel_names')."
            )
        result: dict[str, tuple[list[Path], Path | None]] = {}
        for case, files in found.items():
            label = self.path / labels / f"{case}{ending}" if labels is not None else None
            labeled = label is not None and label.is_file()
            result[case] = ([files[c] for c in range(channels)], label if labeled else None)
        label_folder = self.path / labels if labels is not None else None
        if label_folder is not None and label_folder.is_dir():
            for f in sorted(label_folder.iterdir()):
                if f.name.endswith(ending) and not f.name.startswith("."):
                    case = f.name[: -len(ending)]
                    if case not in result:
                        raise DataValidationError(
                            f"{f}: label without an image; expected {folder}/{case}_0000{ending}."
                        )
        return result

    def cases(self) -> dict[str, dict[str, tuple[list[Path], Path | None]]]:
        """``{"train": {case: (channel files, label file or None)}, "test": {...}}``."""
        if self._scan is None:
            train = self._scan_folder("imagesTr", "labelsTr")
            if not train:
                raise DataValidationError(
                    f"{self.path / 'imagesTr'}: found no {self.file_ending} images; expected "
                    f"<case>_0000{self.file_ending} files."
                )
            test = self._scan_folder("imagesTs", "labelsTs")
            both = sorted(set(train) & set(test))
            if both:
                raise DataValidationError(
                    f"{self.path}: case id(s) {both[:10]} in both imagesTr and imagesTs "
                    "(duplicate case id); expected each case once."
                )
            self._scan = {"train": train, "test": test}
        return self._scan

    def _groups(self, cases: dict[str, tuple[list[Path], Path | None]], folder: str):
        groups: dict[str, list[str]] = {}
        for case in sorted(cases):
            groups.setdefault(self.grouper(case, str(self.path / folder)), []).append(case)
        return groups

    def case_split(self) -> CaseSplit:
        """Seeded (or split-file) case split; ``imagesTs`` is the default test set."""
        scan = self.cases()
        train_groups = self._groups(scan["train"], "imagesTr")
        test_groups = self._groups(scan["test"], "imagesTs")
        capable = {
            g for g, cases in train_groups.items() if any(scan["train"][c][1] for c in cases)
        }
        settings = self.settings
        split_file = read_split_file(settings.split_file) if settings.split_file else None
        return resolve_case_split(
            list(train_groups),
            capable,
            labeled_cases=self.labeled_cases,
            split=split_file,
            split_seed=settings.split_seed,
            val_fraction=settings.val_fraction,
            test_fraction=0.0,
            fixed_test=list(test_groups),
            source=settings.split_file or str(self.path),
        )

    def _cases_of(self, groups: list[str]) -> list[tuple[str, list[Path], Path | None]]:
        wanted = set(groups)
        out = []
        for folder in ("train", "test"):
            for case, (files, label) in sorted(self.cases()[folder].items()):
                if self.grouper(case) in wanted:
                    out.append((case, files, label))
        order = {g: i for i, g in enumerate(groups)}
        out.sort(key=lambda item: (order[self.grouper(item[0])], item[0]))
        return out

    # ----------------------------------------------------------------------------- loading
    def load_case(
        self, case: str, files: list[Path], label_file: Path | None, read_label: bool
    ) -> Volume:
        """Reads, checks, slices and normalises one case (through the cache when configured)."""
        cache = self._cache_paths(case, files, label_file if read_label else None)
        if cache is not None and cache[2].is_file():
            cached = self._read_checked_cache(cache, case, files)
            if cached is not None:
                return cached
        arrays, spacing, affine = [], None, None
        for f in files:
            data, file_spacing, file_affine = read_nifti(f)
            if spacing is None:
                spacing, affine = file_spacing, file_affine
            else:  # every channel on the grid of the first
                check_same_geometry(
                    (arrays[0].shape, spacing, affine),
                    (data.shape, file_spacing, file_affine),
                    str(files[0]),
                    str(f),
                    what="channel",
                )
            data = np.asarray(data, dtype=np.float32)
            check_finite(data, str(f))
            arrays.append(data)
        assert spacing is not None and affine is not None
        label = None
        if read_label and label_file is not None:
            label, label_spacing, label_affine = read_nifti(label_file)
            check_same_geometry(
                (arrays[0].shape, spacing, affine),
                (label.shape, label_spacing, label_affine),
                str(files[0]),
                str(label_file),
            )
            check_label_values(label, self.num_classes, str(label_file))
            label = np.asarray(label).astype(self.label_dtype)
        slice_axis = self.settings.slice_axis
        axis = coarsest_axis(spacing) if slice_axis is None else slice_axis
        image = np.ascontiguousarray(np.moveaxis(np.stack(arrays), axis + 1, 1))
        image = self.normalize(image)
        if label is not None:
            label = np.ascontiguousarray(np.moveaxis(label, axis, 0))
        others = [i for i in range(3) if i != axis]
        dhw_spacing = (spacing[axis], spacing[others[0]], spacing[others[1]])
        volume = Volume(
            case_id=case,
            group_id=self.grouper(case),
            image=image,
            label=label,
            spacing=tuple(float(s) for s in dhw_spacing),  # type: ignore[arg-type]
            spacing_known=True,
            affine=affine,
            slice_axis=axis,
            source=str(files[0]),
        )
        if cache is not None:  # hand back the memory map: the decoded arrays are freed
            self._write_cache(cache, volume)
            return self._read_cache(cache, case, files)
        return volume

    def _read_checked_cache(
        self, paths: tuple[Path, Path, Path], case: str, files: list[Path]
    ) -> Volume | None:
        """The cached volume after checking its files against the entry's manifest (sizes and
        checksums); None, with a :class:`~advmim_lightning.data.cache_files.CacheRebuiltWarning`
        naming the damaged file, when the entry must be rebuilt."""
        try:
            meta = json.loads(paths[2].read_text())
            damage = find_damage(paths[2].parent, meta.get("files"))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
            damage = (paths[2], f"its manifest is unreadable ({type(err).__name__}: {err})")
        if damage is None:
            try:
                return self._read_cache(paths, case, files, meta)
            except (OSError, ValueError, KeyError, TypeError) as err:
                damage = (paths[0], f"it is unreadable ({type(err).__name__}: {err})")
        # rebuilt in place (each file replaced atomically), never deleted: another rank may be
        # reading the entry it has just rebuilt
        warn_rebuilt(damage[0], damage[1], ", ".join(str(f) for f in files))
        return None

    def _read_cache(
        self,
        paths: tuple[Path, Path, Path],
        case: str,
        files: list[Path],
        meta: dict | None = None,
    ) -> Volume:
        """The cached volume, its arrays memory-mapped read-only (slices are read on use)."""
        meta = json.loads(paths[2].read_text()) if meta is None else meta
        return Volume(
            case_id=case,
            group_id=self.grouper(case),
            image=np.load(paths[0], mmap_mode="r"),
            label=np.load(paths[1], mmap_mode="r") if meta["has_label"] else None,
            spacing=tuple(meta["spacing"]),  # type: ignore[arg-type]
            spacing_known=True,
            affine=np.asarray(meta["affine"], dtype=np.float64),
            slice_axis=int(meta["slice_axis"]),
            source=str(files[0]),
        )

    def _cache_paths(
        self, case: str, files: list[Path], label_file: Path | None
    ) -> tuple[Path, Path, Path] | None:
        settings = self.settings
        if settings.cache_dir is None:
            return None
        parts = [str(_CACHE_VERSION), settings.normalization, str(settings.window_level)]
        parts += [str(settings.window_width), str(self.num_classes), str(settings.slice_axis)]
        for f in [*files, *([label_file] if label_file else [])]:
            stat = f.stat()
            parts += [str(f.resolve()), str(stat.st_mtime_ns), str(stat.st_size)]
        key = hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
        folder = Path(settings.cache_dir) / "nifti"
        return (
            folder / f"{case}_{key}_image.npy",
            folder / f"{case}_{key}_label.npy",
            folder / f"{case}_{key}.json",
        )

    @staticmethod
    def _write_cache(paths: tuple[Path, Path, Path], volume: Volume) -> None:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        # Each file is written under a name of this process and renamed into place, so that
        # DDP ranks filling the same cache at once never read another's half-written file.
        arrays = [(paths[0], volume.image)]
        if volume.label is not None:
            arrays.append((paths[1], volume.label))
        written = {}
        for path, array in arrays:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                np.save(f, array)
            written[path.name] = describe([tmp])[tmp.name]  # checksum of what was written
            tmp.replace(path)
        meta = {
            "files": written,
            "has_label": volume.label is not None,
            "spacing": list(volume.spacing),
            "affine": np.asarray(volume.affine).tolist(),
            "slice_axis": volume.slice_axis,
        }
        tmp = paths[2].with_name(f"{paths[2].name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(paths[2])  # written last: marks the entry complete

    def load_training(self, split: CaseSplit) -> TrainingPools:
        """Reads every training case once (labels only for the labeled pool)."""
        labeled = set(split.labeled)
        volumes = [
            self.load_case(case, files, label, read_label=self.grouper(case) in labeled)
            for case, files, label in self._cases_of(split.labeled + split.unlabeled)
        ]
        return pools_from_volumes(volumes, split)

    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        """Reads the val or test cases; predict reads the test cases with optional labels."""
        groups = split.val if which == "val" else split.test
        if which == "predict" and not groups:
            raise DataValidationError(
                f"{self.path}: nothing to predict; expected images in imagesTs/ (or a 'test' "
                "list in the split file)."
            )
        volumes = []
        for case, files, label_file in self._cases_of(groups):
            if label_file is None and which != "predict":
                folder = "labelsTr" if files[0].parent.name == "imagesTr" else "labelsTs"
                raise DataValidationError(
                    f"Missing label file {self.path / folder / (case + self.file_ending)} for "
                    f"{which} case {case!r}; expected labels for every {which} case."
                )
            volumes.append(self.load_case(case, files, label_file, read_label=True))
        return volumes
