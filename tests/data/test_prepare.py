"""Raw ACDC NIfTI -> SSL4MIS h5 layout, on a tiny tree written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from advmim_lightning.data import AdvMIMDataModule, DataValidationError
from advmim_lightning.data.prepare import main, prepare_acdc
from advmim_lightning.data.synthetic import write_tiny_raw_acdc


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_raw_acdc(tmp_path_factory.mktemp("raw"), num_patients=5)


def test_convert_and_read_back(raw: Path, tmp_path: Path, tiny: dict) -> None:
    out = tmp_path / "ACDC"
    summary = prepare_acdc(raw, out, seed=0)
    # 5 patients: test round(0.2 x 5) = 1, val max(1, round(0.1 x 4)) = 1, train 3
    assert (len(summary.train), len(summary.val), len(summary.test)) == (3, 1, 1)
    assert summary.num_slices == 3 * 2 * 3 and summary.num_volumes == 2 * 2
    train_list = (out / "train_slices.list").read_text().split()
    assert train_list[0] == f"{summary.train[0]}_frame01_slice_0" and len(train_list) == 18
    assert (out / "val.list").read_text().split() == [
        f"{summary.val[0]}_frame01",
        f"{summary.val[0]}_frame12",
    ]

    name = f"{summary.test[0]}_frame12"
    source = nib.load(raw / "training" / summary.test[0] / f"{name}.nii.gz")
    gt = np.asanyarray(nib.load(raw / "training" / summary.test[0] / f"{name}_gt.nii.gz").dataobj)
    sx, sy, sz = (float(z) for z in source.header.get_zooms())
    with h5py.File(out / "data" / f"{name}.h5") as f:
        image, label = f["image"][()], f["label"][()]
        spacing, affine = tuple(f.attrs["spacing"]), f.attrs["affine"]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32 and label.dtype == np.uint8
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_array_equal(label, np.transpose(gt, (2, 1, 0)))  # z, y, x like SimpleITK
    assert spacing == pytest.approx((sz, sy, sx))
    d, h, w = 2, 5, 7  # the stored affine maps (d, h, w) to the world point of NIfTI (w, h, d)
    np.testing.assert_allclose(affine @ [d, h, w, 1], source.affine @ [w, h, d, 1])
    with h5py.File(out / "data" / "slices" / f"{summary.train[0]}_frame01_slice_0.h5") as f:
        assert f["image"].shape == (32, 32) and f.attrs["spacing"][0] > 1.0

    dm = AdvMIMDataModule(str(out), layout="acdc", labeled_cases=2, **tiny)
    dm.setup("fit")
    dm.setup("test")
    assert dm.case_split.labeled == summary.train[:2] and dm.case_split.test == summary.test
    item = dm.test_dataset[1]
    assert item["spacing_known"] and item["spacing"] == pytest.approx((sz, sy, sx))
    assert not list(tmp_path.glob(".ACDC-*"))  # no temporary folder left


def test_split_file_and_cli(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["patient002"], "test": ["patient004", "patient005"]}))
    out = tmp_path / "out"
    assert (
        main(["--input", str(raw / "training"), "--output", str(out), "--split-file", str(split)])
        == 0
    )
    assert "2 train patients (12 slices), 1 val and 2 test patients" in capsys.readouterr().out
    assert (out / "test.list").read_text().split()[0] == "patient004_frame01"
    assert main(["--input", str(raw), "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_errors_leave_nothing_behind(raw: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    write_tiny_raw_acdc(bad, num_patients=3)
    gt = bad / "training" / "patient003" / "patient003_frame12_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 32, 3), 9, np.uint8), nib.load(gt).affine), gt)
    with pytest.raises(
        DataValidationError,
        match=r"patient003_frame12_gt.nii.gz: label value\(s\) \[9\] outside \[0, 4\)",
    ):
        prepare_acdc(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))
    gt.unlink()
    with pytest.raises(
        DataValidationError, match=r"Missing label file .*patient003_frame12_gt.nii.gz"
    ):
        prepare_acdc(bad, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match=r"found no patientNNN folders"):
        prepare_acdc(tmp_path / "empty", tmp_path / "out2")
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\)"):
        prepare_acdc(raw, tmp_path / "out3", test_fraction=1.5)
