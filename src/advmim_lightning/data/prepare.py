"""Convert the raw ACDC release (NIfTI) into the SSL4MIS h5 layout, keeping voxel spacing.

Input: the ACDC ``training`` folder (or a folder containing it) with
``patientNNN/patientNNN_frameFF.nii.gz``, ``patientNNN_frameFF_gt.nii.gz`` and ``Info.cfg``
(whose ``ED``/``ES`` entries name the two annotated frames; without it every
``patientNNN_frameFF.nii.gz`` with a ``_gt`` file is used).

Output (as SSL4MIS's ``acdc_data_processing.py`` writes it, plus geometry and a manifest)::

    output/
      advmim_prepare.json   # the manifest: this folder was made by advmim prepare
      train_slices.list, val.list, test.list
      data/slices/patientNNN_frameFF_slice_K.h5   # training patients
      data/patientNNN_frameFF.h5                  # validation and test patients

Arrays are stored ``D x H x W`` (``z, y, x``; SimpleITK order, as SSL4MIS), images min-max
normalised per volume to ``[0, 1]`` (float32), labels uint8. Every file carries the h5
attributes ``spacing`` (mm, ``D, H, W`` order) and ``affine`` (4 x 4, voxel ``(d, h, w)`` to
world), which the ``acdc`` layout reads so that distances are in millimetres.

The split is by patient: seeded 70 / 10 / 20 % (train / val / test) by default, or given as a
JSON file ``{"train": [...], "val": [...], "test": [...]}`` of patient ids.

``--overwrite`` replaces only a folder that an earlier prepare made (one holding the manifest
``advmim_prepare.json``), or an empty one: a folder of a user's own files is refused, naming
one of them (the checks of the output folder are in :mod:`advmim_lightning.data.prepare_folders`).
A leading ``~`` in ``--input``, ``--output`` and ``--split-file`` is expanded.

Usage::

    python -m advmim_lightning.data.prepare --input ACDC/database --output data/ACDC
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from advmim_lightning.data.cases import fraction_count, read_split_file, seeded_order
from advmim_lightning.data.nifti import read_nifti
from advmim_lightning.data.prepare_folders import (
    _MADE_BY,
    MANIFEST_NAME,
    check_output_apart,
    check_output_replaceable,
)
from advmim_lightning.data.settings import expand_path
from advmim_lightning.data.validation import (
    DataValidationError,
    check_finite,
    check_label_values,
    check_same_geometry,
)
from advmim_lightning.run.folders import ensure_writable_folder

__all__ = ["PrepareSummary", "find_acdc_volumes", "main", "prepare_acdc"]

_PATIENT = re.compile(r"^patient\d+$")
_FRAME = re.compile(r"^(?P<patient>patient\d+)_frame(?P<frame>\d+)\.nii(\.gz)?$")
ACDC_NUM_CLASSES = 4


@dataclass
class PrepareSummary:
    """What :func:`prepare_acdc` wrote.

    Attributes:
        output: Output folder.
        train: Training patient ids.
        val: Validation patient ids.
        test: Test patient ids.
        num_slices: Number of training slice files.
        num_volumes: Number of volume files.
    """

    output: Path
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    num_slices: int = 0
    num_volumes: int = 0


def _read_info(path: Path) -> dict[str, str]:
    info = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def find_acdc_volumes(input_dir: str | Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """Lists the annotated frames of every patient.

    Args:
        input_dir: The ``training`` folder or a folder containing it.

    Returns:
        ``{patient: [(volume name, image file, label file), ...]}`` sorted by patient and frame.

    Raises:
        DataValidationError: If no patient folder is found, or a frame named in ``Info.cfg``
            (or its ``_gt`` label) is missing.
    """
    base = Path(input_dir)
    if (base / "training").is_dir():
        base = base / "training"
    if not base.is_dir():
        raise DataValidationError(
            f"ACDC input {base} is not a folder; expected the release's training/ folder."
        )
    patients = sorted(p for p in base.iterdir() if p.is_dir() and _PATIENT.match(p.name))
    if not patients:
        raise DataValidationError(
            f"{base}: found no patientNNN folders; expected the raw ACDC training/ folder."
        )
    result: dict[str, list[tuple[str, Path, Path]]] = {}
    for folder in patients:
        info_file = folder / "Info.cfg"
        frames: list[int]
        if info_file.is_file():
            info = _read_info(info_file)
            try:
                frames = sorted({int(info["ED"]), int(info["ES"])})
            except (KeyError, ValueError) as err:
                raise DataValidationError(
                    f"{info_file}: ED/ES entries {info.get('ED')!r}/{info.get('ES')!r}; expected "
                    "integer frame numbers."
                ) from err
        else:
            frames = sorted(
                int(m.group("frame"))
                for f in folder.iterdir()
                if (m := _FRAME.match(f.name)) and m.group("patient") == folder.name
            )
        entries = []
        for frame in frames:
            name = f"{folder.name}_frame{frame:02d}"
            image = folder / f"{name}.nii.gz"
            label = folder / f"{name}_gt.nii.gz"
            for path, what in ((image, "image"), (label, "label")):
                if not path.is_file():
                    raise DataValidationError(
                        f"Missing {what} file {path}: found nothing, expected the frame "
                        f"{frame} named in {info_file.name}."
                    )
            entries.append((name, image, label))
        if not entries:
            raise DataValidationError(
                f"{folder}: found no annotated frame; expected patientNNN_frameFF.nii.gz with a "
                "_gt.nii.gz label."
            )
        result[folder.name] = entries
    return result


def _to_dhw(
    data: np.ndarray, spacing: tuple[float, float, float], affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """NIfTI ``x, y, z`` array to ``z, y, x`` (SimpleITK order), with spacing and affine."""
    dhw = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    dhw_affine = np.asarray(affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    return dhw, (spacing[2], spacing[1], spacing[0]), dhw_affine


def _split_patients(
    patients: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    split_file: str | None,
) -> tuple[list[str], list[str], list[str]]:
    if split_file is not None:
        split = read_split_file(split_file)
        train, val, test = split.train or [], split.val or [], split.test or []
        listed = set(train) | set(val) | set(test)
        unknown = sorted(listed - set(patients))
        if unknown:
            raise DataValidationError(
                f"{split_file}: patient(s) {unknown[:10]} have no folder in the input; expected "
                f"ids among {patients[:3]}..."
            )
        if not train:
            train = [p for p in patients if p not in listed]
        return sorted(train), sorted(val), sorted(test)
    order = seeded_order(patients, seed)
    n_test = fraction_count(test_fraction, len(order))
    n_val = fraction_count(val_fraction, len(order) - n_test)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray, spacing, affine) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")
        f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
        f.attrs["affine"] = affine


def prepare_acdc(
    input_dir: str | Path,
    output_dir: str | Path,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_file: str | None = None,
    overwrite: bool = False,
) -> PrepareSummary:
    """Converts the raw ACDC release to the SSL4MIS h5 layout (see the module docstring).

    The output is built in a temporary folder next to ``output_dir`` and moved into place at
    the end, so an interrupted run leaves no half-written dataset.

    Args:
        input_dir: Raw ACDC ``training`` folder (or its parent).
        output_dir: Output folder; must not exist unless ``overwrite`` (``~`` is expanded).
        seed: Seed of the patient split.
        val_fraction: Fraction of patients for validation (of those left after the test set).
        test_fraction: Fraction of patients for testing.
        split_file: JSON split by patient id (overrides the seeded split).
        overwrite: Replace an existing output folder that an earlier prepare made (it holds
            :data:`MANIFEST_NAME`) or an empty one.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        DataValidationError: On missing/unreadable files, an image/label shape or geometry
            mismatch, labels outside ``[0, 4)``, non-finite voxels, an existing output
            without ``overwrite``, or (with ``overwrite``) an existing output that no prepare
            made (see :func:`check_output_replaceable`).
        ValueError: On fractions outside ``[0, 1)``, or an output folder that is an input,
            lies inside one or contains one (see :func:`check_output_apart`).
        OSError: Naming the folder, when the output's folder cannot be created or written.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    input_dir, split_file = expand_path(input_dir), expand_path(split_file)
    output = Path(expand_path(output_dir))  # type: ignore[arg-type]
    named = [("input folder", input_dir), *([("split file", split_file)] if split_file else [])]
    check_output_apart(output, named)
    volumes = find_acdc_volumes(input_dir)
    # and every folder and file read: any of them may be a link to elsewhere
    files = [f for entries in volumes.values() for _, *pair in entries for f in pair]
    folders = sorted({f.parent for f in files} | {f.parent.parent for f in files})
    check_output_apart(
        output, [("input folder", d) for d in folders] + [("input file", f) for f in files]
    )
    if output.exists() and not overwrite:
        raise DataValidationError(
            f"Output folder {output} already exists; expected a new folder (or pass "
            "overwrite=True / --overwrite)."
        )
    if output.exists() or output.is_symlink():
        check_output_replaceable(output)
    train, val, test = _split_patients(
        sorted(volumes), seed, val_fraction, test_fraction, split_file
    )
    ensure_writable_folder(output.parent, "folder of the output (--output)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        summary = PrepareSummary(output=output, train=train, val=val, test=test)
        (tmp / "data" / "slices").mkdir(parents=True)
        lists: dict[str, list[str]] = {"train_slices": [], "val": [], "test": []}
        split_of = {p: "train_slices" for p in train}
        split_of.update({p: "val" for p in val})
        split_of.update({p: "test" for p in test})
        for patient in sorted(split_of):
            for name, image_file, label_file in volumes[patient]:
                data, spacing, affine = read_nifti(image_file)
                label, label_spacing, label_affine = read_nifti(label_file)
                check_same_geometry(
                    (data.shape, spacing, affine),
                    (label.shape, label_spacing, label_affine),
                    str(image_file),
                    str(label_file),
                )
                image = np.asarray(data, dtype=np.float32)
                check_finite(image, str(image_file))
                check_label_values(label, ACDC_NUM_CLASSES, str(label_file))
                image, dhw_spacing, dhw_affine = _to_dhw(image, spacing, affine)
                label = np.transpose(np.asarray(label), (2, 1, 0)).astype(np.uint8)
                low, high = float(image.min()), float(image.max())
                image = ((image - low) / (high - low) if high > low else image * 0).astype(
                    np.float32
                )
                split = split_of[patient]
                if split == "train_slices":
                    for d in range(image.shape[0]):
                        slice_name = f"{name}_slice_{d}"
                        _write_h5(
                            tmp / "data" / "slices" / f"{slice_name}.h5",
                            image[d],
                            label[d],
                            dhw_spacing,
                            dhw_affine,
                        )
                        lists[split].append(slice_name)
                        summary.num_slices += 1
                else:
                    _write_h5(tmp / "data" / f"{name}.h5", image, label, dhw_spacing, dhw_affine)
                    lists[split].append(name)
                    summary.num_volumes += 1
        for split, names in lists.items():
            (tmp / f"{split}.list").write_text("".join(f"{n}\n" for n in names))
        manifest = {
            "made_by": _MADE_BY,
            "input": str(Path(input_dir).resolve()),
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_file": str(split_file) if split_file else None,
            "patients": {"train": train, "val": val, "test": test},
            "num_slices": summary.num_slices,
            "num_volumes": summary.num_volumes,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        tmp.replace(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (also used by ``advmim prepare``)."""
    parser = argparse.ArgumentParser(
        prog="python -m advmim_lightning.data.prepare",
        description="Convert the raw ACDC NIfTI release into the SSL4MIS h5 layout "
        "(per-volume min-max images, training slices, val/test volumes, .list files, voxel "
        "spacing as an h5 attribute), split by patient.",
    )
    parser.add_argument("--input", required=True, help="raw ACDC training/ folder (or parent)")
    parser.add_argument(
        "--output",
        required=True,
        help="output folder (must not exist; never the input, inside it or containing it)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="default: 0.1")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="default: 0.2")
    parser.add_argument(
        "--split-file", default=None, help='JSON {"train": [...], "val": [...], "test": [...]}'
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing output that an earlier prepare made (it holds {MANIFEST_NAME})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the converter; returns the exit status (0 on success, 1 on a data error)."""
    args = build_parser().parse_args(argv)
    try:
        summary = prepare_acdc(
            args.input,
            args.output,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            split_file=args.split_file,
            overwrite=args.overwrite,
        )
    except (DataValidationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.output}: {len(summary.train)} train patients ({summary.num_slices} "
        f"slices), {len(summary.val)} val and {len(summary.test)} test patients "
        f"({summary.num_volumes} volumes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
