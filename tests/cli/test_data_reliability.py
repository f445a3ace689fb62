"""Data reliability through the command line and as a Lightning user (Reliability III).

Each test runs what a user runs (``advmim ...`` through ``main([...])``, or the data module
with a Lightning ``Trainer``-style call order) on data written in ``tmp_path``, and checks the
message names the file, the value found and what was expected.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from advmim_lightning.data import AdvMIMDataModule, SourceSettings
from advmim_lightning.data.cache_files import CacheRebuiltWarning
from advmim_lightning.data.prepare_folders import MANIFEST_NAME
from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_nifti, write_tiny_raw_acdc
from cli.test_cli import ROOT, TINY, cli_error, common, run

ACDC = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY]
QUICKSTART = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY]
NIFTI = ["-c", ROOT / "configs/nifti/advmim.yaml", "-c", TINY]
FAST = ["--trainer.fast_dev_run", "1"]


# ----------------------------------------------------------------------------------------
# a. ACDC refuses a num_classes above the classes its labels hold
# ----------------------------------------------------------------------------------------
def test_acdc_refuses_more_classes_than_its_labels_hold(tmp_path):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64)
    words = [*ACDC, *common(tmp_path, "five"), "--data.root", root, *FAST]
    message = cli_error("fit", *words, "--data.labeled_cases", "2", "--data.num_classes", "5")
    assert f"{root}: the labels of the " in message, message
    assert "hold class values up to 3 (the highest in " in message, message
    assert "but num_classes=5; expected num_classes=4." in message, message
    assert not (tmp_path / "runs" / "five" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------
# b. advmim prepare --overwrite replaces only a folder an earlier prepare made
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_acdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_raw_acdc(tmp_path_factory.mktemp("raw"), num_patients=3)


def test_prepare_overwrite_refuses_a_folder_of_user_files(raw_acdc, tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "chapters").mkdir(parents=True)
    (out / "chapters" / "intro.tex").write_text("years of work")
    (out / "notes.txt").write_text("more work")
    with pytest.raises(SystemExit):
        run("prepare", "--input", raw_acdc, "--output", out, "--overwrite")
    message = capsys.readouterr().err
    assert f"Output folder {out} was not made by advmim prepare (no {MANIFEST_NAME} in it)" in (
        message
    )
    assert f"holds files (e.g. {out / 'notes.txt'})" in message, message  # top level first
    assert "Nothing was deleted" in message
    assert (out / "chapters" / "intro.tex").read_text() == "years of work"
    assert (out / "notes.txt").read_text() == "more work"
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(SystemExit):
        run("prepare", "--input", raw_acdc, "--output", blocker, "--overwrite")
    assert f"Output {blocker} exists and is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "mine"


def test_prepare_overwrite_replaces_what_prepare_made_and_an_empty_folder(raw_acdc, tmp_path):
    out = tmp_path / "ACDC"
    out.mkdir()  # empty: nothing to lose
    run("prepare", "--input", raw_acdc, "--output", out, "--overwrite")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["made_by"] == "advmim prepare" and manifest["seed"] == 0
    assert sorted(p for ps in manifest["patients"].values() for p in ps) == [
        "patient001",
        "patient002",
        "patient003",
    ]
    (out / "stale.txt").write_text("from the earlier prepare's folder")
    run("prepare", "--input", raw_acdc, "--output", out, "--overwrite", "--seed", "1")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / MANIFEST_NAME).read_text())["seed"] == 1


# ----------------------------------------------------------------------------------------
# e. ~ in path settings is expanded once (HOME is tmp_path here)
# ----------------------------------------------------------------------------------------
def test_prepare_expands_the_home_folder(raw_acdc, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").symlink_to(raw_acdc)
    run("prepare", "--input", "~/raw", "--output", "~/ACDC")
    assert (tmp_path / "ACDC" / "train_slices.list").is_file()
    assert not (tmp_path / "~").exists()  # no folder literally named ~


# ----------------------------------------------------------------------------------------
# c. A damaged cache file is found (size, checksum) and rebuilt, naming the file
# ----------------------------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    """Truncate, zero (same size) or delete a cache file."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(path.stat().st_size))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
def test_a_damaged_phantom_cache_is_rebuilt_by_the_next_run(how, tmp_path):
    cache = tmp_path / "cache"
    words = [*QUICKSTART, "--data.settings.cache_dir", cache, *FAST]
    run("fit", *words, *common(tmp_path, "first"))
    (npz,) = cache.glob("phantom_*.npz")
    damage(npz, how)
    with pytest.warns(CacheRebuiltWarning) as record:
        run("fit", *words, *common(tmp_path, "second"))
    messages = [str(w.message) for w in record if w.category is CacheRebuiltWarning]
    assert messages[0].startswith(f"cache file {npz} is damaged: "), messages
    assert "rebuilding it from the phantom generator" in messages[0]
    with warnings.catch_warnings():  # rebuilt: the third run reads it without a word
        warnings.simplefilter("error", CacheRebuiltWarning)
        run("fit", *words, *common(tmp_path, "third"))


def nifti_module(root: Path, cache: Path | None) -> AdvMIMDataModule:
    return AdvMIMDataModule(
        str(root),
        layout="nifti",
        image_size=(32, 32),
        num_workers=0,
        labeled_batch_size=2,
        unlabeled_batch_size=2,
        settings=SourceSettings(cache_dir=None if cache is None else str(cache)),
    )


@pytest.mark.parametrize("how", ["truncated", "zeroed", "deleted"])
def test_a_damaged_nifti_cache_entry_is_rebuilt_naming_the_file(how, tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti")
    cache = tmp_path / "cache"
    first = nifti_module(root, cache)
    first.prepare_data()
    first.setup("test")  # as Trainer.test: writes the test volumes' cache entries
    image = sorted((cache / "nifti").glob("case_*_image.npy"))[0]
    damage(image, how)
    second = nifti_module(root, cache)
    second.prepare_data()
    with pytest.warns(CacheRebuiltWarning, match=rf"cache file {image} is damaged: "):
        second.setup("test")
    in_ram = nifti_module(root, None)
    in_ram.setup("test")
    for index in range(len(in_ram.test_dataset)):
        a, b = in_ram.test_dataset[index], second.test_dataset[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert isinstance(second.test_dataset.volumes[0].image, np.memmap)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRebuiltWarning)
        nifti_module(root, cache).setup("test")


# ----------------------------------------------------------------------------------------
# d. A volume with zero size along an axis is named as such (not as a 4D file)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [((64, 0, 3), 1), ((64, 64, 0), 2)])
def test_a_zero_size_nifti_volume_is_named_with_its_shape(shape, axis, tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti", size=64)
    empty = root / "imagesTr" / "case_001_0000.nii.gz"
    affine = nib.load(empty).affine
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), empty)
    message = cli_error("fit", *NIFTI, *common(tmp_path, "bad"), "--data.root", root, *FAST)
    assert (
        f"advmim: error: {empty}: volume has zero size along axis {axis} (shape {shape}); "
        "expected at least one voxel along every axis." in message
    ), message
    assert "4D" not in message


def test_a_zero_size_acdc_volume_is_named_with_its_shape(tmp_path):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64)
    volume = root / "data" / f"{(root / 'val.list').read_text().split()[0]}.h5"
    with h5py.File(volume, "w") as f:
        f.create_dataset("image", data=np.zeros((0, 64, 64), np.float32))
        f.create_dataset("label", data=np.zeros((0, 64, 64), np.uint8))
    words = [*ACDC, *common(tmp_path, "bad"), "--data.root", root, "--data.labeled_cases", "2"]
    message = cli_error("validate", *words, "--allow_random_weights", "true")
    assert (
        f"{volume}: image has zero size along axis 0 (shape (0, 64, 64)); expected at least "
        "one voxel along every axis." in message
    ), message


# ----------------------------------------------------------------------------------------
# e. ~ in data.root and data.settings.cache_dir is expanded once
# ----------------------------------------------------------------------------------------
def test_the_data_paths_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    write_tiny_nifti(tmp_path / "nifti", size=64)
    words = [*NIFTI, *common(tmp_path, "home"), "--data.root", "~/nifti", *FAST]
    run("fit", *words, "--data.settings.cache_dir", "~/cache")
    assert list((tmp_path / "cache" / "nifti").glob("*.npy"))
    assert not (tmp_path / "~").exists()  # no folder literally named ~
    module = AdvMIMDataModule("~/nifti", layout="nifti", settings={"cache_dir": "~/cache"})
    assert module.root == str(tmp_path / "nifti") == module.source.root
    assert module.cache_dir == str(tmp_path / "cache") == module.source.settings.cache_dir
    assert module.hparams["root"] == str(tmp_path / "nifti")
