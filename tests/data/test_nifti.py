"""The MSD / nnU-Net v2 NIfTI layout: geometry carried to eval items, channels, errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from advmim_lightning.data import AdvMIMDataModule, DataValidationError, SourceSettings


@pytest.fixture
def nifti_copy(tiny_nifti: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_nifti, tmp_path / "nifti"))


def test_end_to_end_with_geometry(tiny_nifti: Path, nifti_dm) -> None:
    dm = nifti_dm(tiny_nifti)
    assert dm.class_names == ["background", "RV", "Myo", "LV"] and dm.in_channels == 1
    dm.setup("fit")
    split = dm.case_split
    assert len(split.val) == 1 and len(split.labeled) == 3  # val: round(0.1 x 6) -> 1
    assert {"case_006", "case_007"} <= set(split.unlabeled) and len(split.unlabeled) == 4
    assert len(dm.labeled_dataset) == 9 and len(dm.unlabeled_dataset) == 12  # 3 slices per case
    batch = next(iter(dm.train_dataloader()))
    assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
    assert batch["labeled"]["label"].dtype == torch.int64
    assert batch["unlabeled"]["image"].shape == (2, 1, 32, 32)

    dm.setup("test")
    assert dm.test_dataset.case_ids() == ["case_008", "case_009"]
    item = next(iter(dm.test_dataloader()))
    image_file = tiny_nifti / "imagesTs" / "case_008_0000.nii.gz"
    img = nib.load(image_file)
    sx, sy, sz = (float(z) for z in img.header.get_zooms())
    assert item["slice_axis"] == 2  # the coarsest spacing axis (slices)
    assert item["spacing"] == pytest.approx((sz, sx, sy)) and item["spacing_known"]
    np.testing.assert_allclose(item["affine"].numpy(), img.affine)
    assert item["source"] == str(image_file) and item["case_index"] == 0
    assert item["image"].shape == (1, 3, 32, 32) and item["label"].shape == (3, 32, 32)
    original = np.asanyarray(nib.load(tiny_nifti / "labelsTs" / "case_008.nii.gz").dataobj)
    np.testing.assert_array_equal(
        np.moveaxis(item["label"].numpy(), 0, item["slice_axis"]), original
    )
    data = img.get_fdata()
    expected = (data - data.min()) / (data.max() - data.min())
    np.testing.assert_allclose(np.moveaxis(item["image"][0].numpy(), 0, 2), expected, atol=1e-5)


def test_slice_axis_override(tiny_nifti: Path, nifti_dm) -> None:
    dm = nifti_dm(tiny_nifti, settings=SourceSettings(slice_axis=0))
    dm.setup("test")
    item = dm.test_dataset[0]
    assert item["slice_axis"] == 0 and item["image"].shape == (1, 32, 32, 3)
    sx, sy, sz = (
        float(z)
        for z in nib.load(tiny_nifti / "imagesTs" / "case_008_0000.nii.gz").header.get_zooms()
    )
    assert item["spacing"] == pytest.approx((sx, sy, sz))


def test_two_channels_end_to_end(tiny_nifti_2ch: Path, nifti_dm) -> None:
    dm = nifti_dm(tiny_nifti_2ch, settings=SourceSettings(normalization="zscore"))
    assert dm.in_channels == 2
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labeled"]["image"].shape == (2, 2, 32, 32)
    assert batch["unlabeled"]["image"].shape == (2, 2, 32, 32)
    volume = dm.val_dataset[0]["image"]
    assert volume.shape == (2, 3, 32, 32)
    for c in range(2):  # z-scored per channel and volume
        assert volume[c].mean().item() == pytest.approx(0.0, abs=1e-5)
        assert volume[c].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    dm.setup("predict")  # imagesTs without labelsTs: predict works, test does not
    assert [("label" in dm.predict_dataset[i]) for i in range(2)] == [False, False]
    with pytest.raises(
        DataValidationError,
        match=r"Missing label file .*labelsTs/case_008.nii.gz for test case 'case_008'",
    ):
        nifti_dm(tiny_nifti_2ch).setup("test")


def test_split_file_and_msd_labels(nifti_copy: Path, tmp_path: Path, nifti_dm) -> None:
    meta = json.loads((nifti_copy / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "RV", "2": "Myo", "3": "LV"}  # MSD style
    (nifti_copy / "dataset.json").write_text(json.dumps(meta))
    split = {
        "train": ["case_000", "case_001", "case_006"],
        "val": ["case_002"],
        "labeled": ["case_001"],
        "test": ["case_003"],
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    dm = nifti_dm(nifti_copy, settings=SourceSettings(split_file=str(tmp_path / "split.json")))
    dm.setup("fit")
    dm.setup("test")
    s = dm.case_split
    assert (s.labeled, s.unlabeled, s.val, s.test) == (
        ["case_001"],
        ["case_000", "case_006"],
        ["case_002"],
        ["case_003"],
    )
    assert dm.test_dataset.case_ids() == ["case_003"]  # a test case taken from imagesTr


def test_cache_dir_memory_maps(tiny_nifti: Path, tmp_path: Path, nifti_dm) -> None:
    in_ram = nifti_dm(tiny_nifti)
    in_ram.setup("test")
    first = nifti_dm(tiny_nifti, settings=SourceSettings(cache_dir=str(tmp_path / "cache")))
    first.setup(None)
    # the run that writes the cache already holds memory maps, not the decoded volumes
    for volumes in (first.labeled_dataset.volumes, first.unlabeled_dataset.volumes):
        assert all(isinstance(v.image, np.memmap) for v in volumes)
    assert isinstance(first.labeled_dataset.volumes[0].label, np.memmap)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    second = nifti_dm(tiny_nifti, settings=SourceSettings(cache_dir=str(tmp_path / "cache")))
    second.setup("test")
    assert isinstance(second.test_dataset.volumes[0].image, np.memmap)
    a, b = in_ram.test_dataset[1], second.test_dataset[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["spacing"] == b["spacing"] and a["slice_axis"] == b["slice_axis"]


def _save(path: Path, data: np.ndarray) -> None:
    """Replace the array of ``path`` (keeping its affine, so only the array is at fault)."""
    affine = nib.load(path).affine if path.exists() else np.diag([1.5, 1.5, 8.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)


def _json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (
            lambda r: _save(r / "labelsTr" / "case_000.nii.gz", np.zeros((32, 30, 3), np.uint8)),
            r"case_000.nii.gz: label shape \(32, 30, 3\) does not match the image shape "
            r"\(32, 32, 3\) of .*case_000_0000.nii.gz",
        ),
        (
            lambda r: _save(r / "labelsTr" / "case_000.nii.gz", np.full((32, 32, 3), 5, np.uint8)),
            r"case_000.nii.gz: label value\(s\) \[5\] outside \[0, 4\)",
        ),
        (
            lambda r: _save(
                r / "labelsTr" / "case_000.nii.gz", np.full((32, 32, 3), 1.5, np.float32)
            ),
            r"case_000.nii.gz: label holds the non-integer value 1.5",
        ),
        (
            lambda r: _save(
                r / "imagesTr" / "case_001_0000.nii.gz", np.full((32, 32, 3), np.inf, np.float32)
            ),
            r"case_001_0000.nii.gz: image has 3072 non-finite voxel\(s\) \(first inf",
        ),
        (
            lambda r: (r / "imagesTr" / "case_001_0000.nii.gz").write_bytes(
                gzip.compress(b"garbage" * 10)
            ),
            r"Unreadable NIfTI file .*case_001_0000.nii.gz",
        ),
        (
            lambda r: _save(r / "labelsTr" / "case_999.nii.gz", np.zeros((32, 32, 3), np.uint8)),
            r"labelsTr/case_999.nii.gz: label without an image; "
            r"expected .*imagesTr/case_999_0000.nii.gz",
        ),
        (
            lambda r: shutil.copy(
                r / "imagesTr" / "case_000_0000.nii.gz", r / "imagesTs" / "case_000_0000.nii.gz"
            ),
            r"case id\(s\) \['case_000'\] in both imagesTr and imagesTs \(duplicate case id\)",
        ),
        (
            lambda r: shutil.copy(
                r / "imagesTr" / "case_000_0000.nii.gz", r / "imagesTr" / "case_000.nii.gz"
            ),
            r"imagesTr/case_000_0000.nii.gz: duplicate case id 'case_000'",
        ),
        (
            lambda r: _save(
                r / "imagesTr" / "case_001_0000.nii.gz", np.zeros((32, 32, 3, 2), np.float32)
            ),
            r"case_001_0000.nii.gz: array of shape \(32, 32, 3, 2\); expected a 3D volume per file",
        ),
        (
            lambda r: _json(r, labels={"background": 0, "heart": [1, 2]}),
            r"dataset.json: 'labels' is .*region-based",
        ),
        (
            lambda r: _json(r, labels={"background": 0, "LV": 2}),
            r"label values \[0, 2\]; expected 0 .. 1 without gaps",
        ),
        (
            lambda r: _json(r, file_ending=".mha"),
            r"file_ending '.mha'; expected '.nii.gz' or '.nii'",
        ),
        (lambda r: _json(r, channel_names=None), r"'channel_names' is None; expected a mapping"),
        (
            lambda r: (r / "dataset.json").unlink(),
            r"Missing dataset.json file .*dataset.json: found nothing",
        ),
    ],
)
def test_data_errors(nifti_copy: Path, corrupt, message: str, nifti_dm) -> None:
    corrupt(nifti_copy)
    with pytest.raises(DataValidationError, match=message):
        dm = nifti_dm(
            nifti_copy,
            labeled_cases=["case_000", "case_001"],
            settings=SourceSettings(val_fraction=0.0),
        )
        dm.setup("fit")
        dm.setup("test")


def test_argument_errors(tiny_nifti: Path, nifti_dm) -> None:
    # The settings check slice_axis once, for every source.
    with pytest.raises(ValueError, match="slice_axis must be 0, 1, 2 or None"):
        SourceSettings(slice_axis=3)
    with pytest.raises(ValueError, match="root is required for layout='nifti'"):
        AdvMIMDataModule(layout="nifti")


def test_wrong_num_classes_and_missing_channel(
    tiny_nifti_2ch: Path, tmp_path: Path, nifti_dm
) -> None:
    with pytest.raises(
        DataValidationError,
        match=r"dataset.json: 4 labels .*but num_classes=3; expected num_classes=4",
    ):
        nifti_dm(tiny_nifti_2ch, num_classes=3)
    root = Path(shutil.copytree(tiny_nifti_2ch, tmp_path / "two"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(
        DataValidationError,
        match=r"Missing image file\(s\) .*imagesTr/case_001_0001.nii.gz: .*dataset.json "
        r"declares 2 channels \['MRI', 'MRI1'\], but case 'case_001' has channels \[0\]",
    ):
        nifti_dm(root)  # the listing is checked when the data module is built
    (root / "imagesTr" / "case_002_0000.nii.gz").rename(root / "imagesTr" / "case_002.nii.gz")
    with pytest.raises(DataValidationError, match=r"case_002.nii.gz: no channel suffix"):
        nifti_dm(root).setup("fit")
