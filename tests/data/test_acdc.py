"""The SSL4MIS ACDC layout end to end, and every data error with its message."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from advmim_lightning.data import AdvMIMDataModule, DataValidationError, SourceSettings
from advmim_lightning.data.synthetic import write_tiny_acdc


@pytest.fixture
def acdc_copy(tiny_acdc: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_acdc, tmp_path / "acdc"))


def test_end_to_end(tiny_acdc: Path, acdc_dm) -> None:
    dm = acdc_dm(tiny_acdc)
    assert (dm.class_names, dm.in_channels, dm.layout) == (
        ["background", "RV", "Myo", "LV"],
        1,
        "acdc",
    )
    dm.setup("fit")
    # 4 training patients x 2 frames x 3 slices; the first 3 patients in list order are labeled.
    assert dm.case_split.labeled == ["patient001", "patient002", "patient003"]
    assert dm.case_split.unlabeled == ["patient004"]
    assert len(dm.labeled_dataset) == 18 and len(dm.unlabeled_dataset) == 6
    assert set(dm.labeled_dataset.case_ids()) == {
        f"patient00{p}_frame{f}" for p in (1, 2, 3) for f in ("01", "12")
    }
    assert all(v.label is None for v in dm.unlabeled_dataset.volumes)  # labels dropped on load
    batch = next(iter(dm.train_dataloader()))
    assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
    assert batch["labeled"]["image"].dtype == torch.float32
    assert (
        batch["labeled"]["label"].shape == (2, 32, 32)
        and batch["labeled"]["label"].dtype == torch.int64
    )
    assert batch["unlabeled"]["image"].shape == (2, 1, 32, 32) and "label" not in batch["unlabeled"]
    assert all(c.startswith("patient004") for c in batch["unlabeled"]["case_id"])
    assert len(dm.val_dataset) == 2 and dm.val_dataset.case_ids() == [
        "patient005_frame01",
        "patient005_frame12",
    ]
    item = next(iter(dm.val_dataloader()))
    assert item["image"].shape == (1, 3, 32, 32) and item["label"].shape == (3, 32, 32)
    assert item["case_id"] == "patient005_frame01" and item["case_index"] == 0
    assert item["spacing_known"] and item["slice_axis"] == 0
    with h5py.File(tiny_acdc / "data" / "patient005_frame01.h5") as f:
        assert item["spacing"] == pytest.approx(tuple(f.attrs["spacing"]))
        np.testing.assert_allclose(item["image"][0].numpy(), f["image"][()], atol=1e-6)
    np.testing.assert_allclose(item["affine"].numpy(), np.diag([*item["spacing"], 1.0]))
    assert item["affine"].dtype == torch.float64
    dm.setup("test")
    dm.setup("predict")
    assert (
        dm.test_dataset.case_ids()
        == dm.predict_dataset.case_ids()
        == ["patient006_frame01", "patient006_frame12"]
    )


def test_labeled_case_list_and_no_spacing(tmp_path: Path, acdc_dm) -> None:
    root = write_tiny_acdc(tmp_path / "nospacing", num_patients=4, spacing=False)
    dm = acdc_dm(root, labeled_cases=["patient002"])
    dm.setup("fit")
    assert len(dm.labeled_dataset) == 6 and dm.case_split.unlabeled == ["patient001"]
    item = dm.val_dataset[0]
    assert item["spacing"] == (1.0, 1.0, 1.0) and item["spacing_known"] is False
    np.testing.assert_array_equal(item["affine"].numpy(), np.eye(4))


def test_supervised_only_without_unlabeled_pool(tiny_acdc: Path, acdc_dm) -> None:
    with pytest.raises(
        DataValidationError, match=r"unlabeled pool is empty: all 4 training case\(s\) are labeled"
    ):
        acdc_dm(tiny_acdc, labeled_cases=4).setup("fit")
    dm = acdc_dm(tiny_acdc, labeled_cases=4, require_unlabeled=False)
    dm.setup("fit")
    assert dm.unlabeled_dataset is None
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"labeled", "iteration"}
    assert len(dm.train_dataloader()) == 12  # 24 labeled slices / batch 2


def test_small_labeled_pool_warns_and_repeats(tiny_acdc: Path, acdc_dm) -> None:
    dm = acdc_dm(tiny_acdc, labeled_cases=["patient001"], labeled_batch_size=8)
    with pytest.warns(
        UserWarning, match=r"labeled pool has 6 slice\(s\), fewer than labeled_batch_size=8"
    ):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labeled"]["image"].shape == (8, 1, 32, 32)
    assert set(batch["labeled"]["case_id"]) == {"patient001_frame01", "patient001_frame12"}


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    with h5py.File(path, "r") as f:
        content = {k: f[k][()] for k in f}
    content.update(arrays)
    with h5py.File(path, "w") as f:
        for key, value in content.items():
            f.create_dataset(key, data=value)


SLICE = "data/slices/patient002_frame01_slice_1.h5"


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (
            lambda r: (r / SLICE).unlink(),
            r"Missing h5 file .*patient002_frame01_slice_1.h5: found nothing",
        ),
        (
            lambda r: (r / SLICE).write_bytes(b"not hdf5"),
            r"Unreadable h5 file .*patient002_frame01_slice_1.h5",
        ),
        (
            lambda r: _rewrite(r / SLICE, label=np.zeros((31, 32), np.uint8)),
            r"slice_1.h5: label shape \(31, 32\) does not match the image shape \(32, 32\)",
        ),
        (
            lambda r: _rewrite(r / SLICE, label=np.full((32, 32), 7, np.uint8)),
            r"slice_1.h5: label value\(s\) \[7\] outside \[0, 4\) \(num_classes=4\)",
        ),
        (
            lambda r: _rewrite(r / SLICE, image=np.full((32, 32), np.nan, np.float32)),
            r"slice_1.h5: image has 1024 non-finite voxel\(s\) \(first nan at index \(0, 0\)\)",
        ),
        (
            lambda r: _rewrite(r / SLICE, image=np.zeros((2, 32, 32), np.float32)),
            r"slice_1.h5: image has shape \(2, 32, 32\) \(3 axes\); expected 2 axes",
        ),
        (
            lambda r: (r / "train_slices.list").write_text(
                (r / "train_slices.list").read_text() + "patient001_frame01_slice_0\n"
            ),
            r"train_slices.list: duplicate name\(s\) 'patient001_frame01_slice_0' \(2x\)",
        ),
        (
            lambda r: (r / "val.list").write_text("patient001_frame01\n"),
            r"patient 'patient001' is in train_slices.list and val.list \(train_slices.list: "
            r"patient001_frame01_slice_0, .* and 3 more; val.list: patient001_frame01\)",
        ),
        (
            lambda r: (r / "test.list").write_text("patient005_frame01\n"),
            r"patient 'patient005' is in val.list and test.list \(val.list: patient005_frame01, "
            r"patient005_frame12; test.list: patient005_frame01\); expected each patient in one",
        ),
        (
            lambda r: (r / "test.list").write_text("patient006_frame01\npatient005_frame12\n"),
            r"patient 'patient005' is in val.list and test.list \(val.list: patient005_frame01, "
            r"patient005_frame12; test.list: patient005_frame12\)",
        ),
        (lambda r: (r / "val.list").unlink(), r"Missing list file .*val.list: found nothing"),
        (
            lambda r: (r / "train_slices.list").write_text("case7_slice_0\n"),
            r"train_slices.list: name 'case7_slice_0' does not match the case id pattern",
        ),
        (
            lambda r: _rewrite(
                r / "data/patient005_frame01.h5", label=np.zeros((3, 32, 30), np.uint8)
            ),
            r"frame01.h5: label shape \(3, 32, 30\) does not match the image shape \(3, 32, 32\)",
        ),
    ],
)
def test_data_errors(acdc_copy: Path, corrupt, message: str, acdc_dm) -> None:
    corrupt(acdc_copy)
    with pytest.raises(DataValidationError, match=message):
        acdc_dm(acdc_copy).setup("fit")


def test_missing_eval_label_only_matters_for_evaluation(acdc_copy: Path, acdc_dm) -> None:
    path = acdc_copy / "data" / "patient006_frame01.h5"
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
    with pytest.raises(
        DataValidationError,
        match=r"patient006_frame01.h5: no 'label' dataset \(found keys \['image'\]\)",
    ):
        acdc_dm(acdc_copy).setup("test")
    dm = acdc_dm(acdc_copy)
    dm.setup("predict")
    assert "label" not in dm.predict_dataset[0] and "label" in dm.predict_dataset[1]


def test_argument_errors(tiny_acdc: Path, acdc_dm) -> None:
    with pytest.raises(ValueError, match="split_file is not used by the acdc layout"):
        acdc_dm(tiny_acdc, settings=SourceSettings(split_file="split.json"))
    with pytest.raises(ValueError, match="root is required for layout='acdc'"):
        AdvMIMDataModule(layout="acdc")
    with pytest.raises(DataValidationError, match=r"ACDC root .* is not a folder"):
        acdc_dm(tiny_acdc / "nope")
    with pytest.raises(
        DataValidationError, match=r"labeled case\(s\) \['patient009'\] are not listed"
    ):
        acdc_dm(tiny_acdc, labeled_cases=["patient009"]).setup("fit")
