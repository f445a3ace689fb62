"""Tiny datasets on disk, made from the phantom, for tests, demos and CLI examples.

- :func:`write_tiny_acdc`: the SSL4MIS ACDC layout (h5 slices, h5 volumes, ``.list`` files),
  with SSL4MIS names such as ``patient001_frame01_slice_0``.
- :func:`write_tiny_nifti`: an nnU-Net v2 folder (``dataset.json``, ``imagesTr``,
  ``labelsTr``, ``imagesTs``, ``labelsTs``), optionally with several channels and unlabeled
  training images.
- :func:`write_tiny_image_folder`: a folder of NIfTI images without labels (by default the
  phantom's target domain) and a labeled evaluation folder, as FLARE's MRI folder
  (:class:`~advmim_lightning.data.image_folder.ImageFolderSource`).
- :func:`write_tiny_raw_acdc`: the raw ACDC release layout
  (``training/patientNNN/patientNNN_frameXX[_gt].nii.gz`` + ``Info.cfg``), the input of
  :mod:`advmim_lightning.data.prepare`.

All are deterministic in ``seed`` and take well under a second at the default sizes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from advmim_lightning.data.phantom import PHANTOM_CLASS_NAMES, generate_phantom_case

__all__ = ["write_tiny_acdc", "write_tiny_image_folder", "write_tiny_nifti", "write_tiny_raw_acdc"]


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def write_tiny_acdc(
    root: str | Path,
    num_patients: int = 6,
    frames: Sequence[int] = (1, 12),
    slices: int = 3,
    size: int = 32,
    val_patients: int = 1,
    test_patients: int = 1,
    seed: int = 0,
    spacing: bool = False,
) -> Path:
    """Writes a tiny SSL4MIS-layout ACDC dataset.

    Patients ``patient001 ..`` each have one volume per frame (``patientNNN_frameFF``, D x H x W
    with ``slices`` slices of ``size x size``); the first ``num_patients - val_patients -
    test_patients`` patients are training patients (slice files listed in
    ``train_slices.list`` in patient, frame, slice order), then validation, then test patients
    (volume files in ``val.list`` / ``test.list``). Images are min-max normalised per volume
    like SSL4MIS's preprocessing.

    Args:
        root: Output folder (created).
        num_patients: Number of patients.
        frames: Frame numbers per patient.
        slices: Slices per volume.
        size: In-plane size.
        val_patients: Validation patients.
        test_patients: Test patients.
        seed: Phantom seed.
        spacing: Whether to store the ``spacing`` attribute (D, H, W) in the h5 files.

    Returns:
        The root folder.
    """
    root = Path(root)
    n_train = num_patients - val_patients - test_patients
    if n_train < 1:
        raise ValueError(f"need at least one training patient, got {num_patients} patients")
    (root / "data" / "slices").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train_slices": [], "val": [], "test": []}
    for p in range(num_patients):
        split = "train_slices" if p < n_train else "val" if p < n_train + val_patients else "test"
        for f_index, frame in enumerate(frames):
            case = generate_phantom_case(p * len(frames) + f_index, slices, size, seed)
            image = _minmax(np.moveaxis(case.image, 2, 0))
            label = np.moveaxis(case.label, 2, 0).astype(np.uint8)
            dhw_spacing = (case.spacing[2], case.spacing[0], case.spacing[1])
            name = f"patient{p + 1:03d}_frame{frame:02d}"
            if split == "train_slices":
                for d in range(slices):
                    slice_name = f"{name}_slice_{d}"
                    with h5py.File(root / "data" / "slices" / f"{slice_name}.h5", "w") as h5:
                        h5.create_dataset("image", data=image[d])
                        h5.create_dataset("label", data=label[d])
                        if spacing:
                            h5.attrs["spacing"] = dhw_spacing
                    lists[split].append(slice_name)
            else:
                with h5py.File(root / "data" / f"{name}.h5", "w") as h5:
                    h5.create_dataset("image", data=image)
                    h5.create_dataset("label", data=label)
                    if spacing:
                        h5.attrs["spacing"] = dhw_spacing
                lists[split].append(name)
    for split, names in lists.items():
        (root / f"{split}.list").write_text("".join(f"{n}\n" for n in names))
    return root


def _phantom_channels(index: int, slices: int, size: int, seed: int, channels: int):
    case = generate_phantom_case(index, slices, size, seed)
    images = [case.image * (1.0 + 0.5 * c) + 10.0 * c for c in range(channels)]
    return images, case.label, case.affine


def write_tiny_nifti(
    root: str | Path,
    num_labeled: int = 6,
    num_unlabeled: int = 2,
    num_test: int = 2,
    slices: int = 3,
    size: int = 32,
    channels: int = 1,
    seed: int = 0,
    test_labels: bool = True,
    file_ending: str = ".nii.gz",
    case_prefix: str = "case",
) -> Path:
    """Writes a tiny nnU-Net v2 style NIfTI dataset.

    Cases ``<case_prefix>_000 ..``: the first ``num_labeled`` have ``labelsTr`` files, the next
    ``num_unlabeled`` only images (unlabeled); ``num_test`` cases go to ``imagesTs`` (with
    ``labelsTs`` when ``test_labels``). Arrays are ``H x W x D`` (``slices`` along the last,
    coarsest axis) with the phantom's anisotropic affine. Channel ``c`` of a case is the phantom
    image scaled by ``1 + 0.5 c`` plus ``10 c``.

    Returns:
        The root folder.
    """
    root = Path(root)
    names = {"imagesTr": [], "imagesTs": []}  # type: dict[str, list[str]]
    total = num_labeled + num_unlabeled + num_test
    for i in range(total):
        name = f"{case_prefix}_{i:03d}"
        folder, labels = (
            ("imagesTr", "labelsTr")
            if i < num_labeled + num_unlabeled
            else ("imagesTs", "labelsTs")
        )
        images, label, affine = _phantom_channels(i, slices, size, seed, channels)
        (root / folder).mkdir(parents=True, exist_ok=True)
        for c, image in enumerate(images):
            nib.save(nib.Nifti1Image(image, affine), root / folder / f"{name}_{c:04d}{file_ending}")
        has_label = i < num_labeled or (folder == "imagesTs" and test_labels)
        if has_label:
            (root / labels).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(label, affine), root / labels / f"{name}{file_ending}")
        names[folder].append(name)
    meta = {
        "channel_names": {str(c): f"MRI{c}" if c else "MRI" for c in range(channels)},
        "labels": {n: i for i, n in enumerate(PHANTOM_CLASS_NAMES)},
        "numTraining": num_labeled + num_unlabeled,
        "file_ending": file_ending,
        "name": "TinyPhantom",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_tiny_image_folder(
    root: str | Path,
    num_images: int = 4,
    num_eval: int = 3,
    slices: int = 3,
    size: int = 32,
    channels: int = 1,
    seed: int = 1,
    domain: str = "target",
    images: str = "images",
    eval_images: str = "imagesVal",
    eval_labels: str = "labelsVal",
) -> Path:
    """Writes unlabeled phantom images and a labeled evaluation set, without ``dataset.json``.

    Cases ``img_000 ..``: the first ``num_images`` go to ``root/<images>`` (no labels), the
    next ``num_eval`` to ``root/<eval_images>`` with labels in ``root/<eval_labels>``. Arrays
    are ``H x W x D`` with the phantom's affine; channel ``c`` is the phantom image of
    ``domain`` scaled by ``1 + 0.5 c`` plus ``10 c``.

    Returns:
        The root folder.
    """
    root = Path(root)
    for i in range(num_images + num_eval):
        case = generate_phantom_case(i, slices, size, seed, domain=domain)
        folder = root / (images if i < num_images else eval_images)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"img_{i:03d}"
        for c in range(channels):
            image = case.image * (1.0 + 0.5 * c) + 10.0 * c
            nib.save(nib.Nifti1Image(image, case.affine), folder / f"{name}_{c:04d}.nii.gz")
        if i >= num_images:
            (root / eval_labels).mkdir(parents=True, exist_ok=True)
            label = nib.Nifti1Image(case.label, case.affine)
            nib.save(label, root / eval_labels / f"{name}.nii.gz")
    return root


def write_tiny_raw_acdc(
    root: str | Path,
    num_patients: int = 5,
    slices: int = 3,
    size: int = 32,
    seed: int = 0,
    frames: tuple[int, int] = (1, 12),
) -> Path:
    """Writes a tiny tree shaped like the raw ACDC release.

    ``root/training/patientNNN/`` holds ``patientNNN_frameFF.nii.gz`` and
    ``patientNNN_frameFF_gt.nii.gz`` for the ED and ES ``frames`` and an ``Info.cfg`` naming
    them. Arrays are ``X x Y x Z`` (``Z`` = slices) with an anisotropic affine, like the
    release.

    Returns:
        ``root`` (pass it, or ``root / "training"``, to the converter).
    """
    root = Path(root)
    for p in range(num_patients):
        patient = f"patient{p + 1:03d}"
        folder = root / "training" / patient
        folder.mkdir(parents=True, exist_ok=True)
        for f_index, frame in enumerate(frames):
            case = generate_phantom_case(p * len(frames) + f_index, slices, size, seed)
            raw = np.round(case.image).astype(np.int16)  # scanner-like integers
            name = f"{patient}_frame{frame:02d}"
            nib.save(nib.Nifti1Image(raw, case.affine), folder / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(case.label, case.affine), folder / f"{name}_gt.nii.gz")
        (folder / "Info.cfg").write_text(
            f"ED: {frames[0]}\nES: {frames[1]}\nGroup: NOR\nHeight: 170.0\nNbFrame: 30\n"
            "Weight: 70.0\n"
        )
    return root
