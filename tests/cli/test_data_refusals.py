"""Data and output refusals through the command line (issue 18, items 4, 8, 9, 10 and 12).

Each test runs ``advmim`` as a user would (``main([...])``) on data it writes in ``tmp_path``
and checks that the command stops with one line naming the files and values at fault, and
that nothing the user owns was changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_nifti, write_tiny_raw_acdc
from advmim_lightning.run.cli import build_cli
from cli.test_cli import ROOT, TINY, cli_error, common, run

QUICKSTART = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY]
NIFTI = ["-c", ROOT / "configs/nifti/advmim.yaml", "-c", TINY]
FAST = ["--trainer.fast_dev_run", "1"]


def tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha1 of the content (or "dir" / "link -> target")}`` of a folder."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            digest[key] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            digest[key] = "dir"
        else:
            digest[key] = hashlib.sha1(path.read_bytes()).hexdigest()
    return digest


# ----------------------------------------------------------------------------------------
# 4. advmim prepare never writes into, replaces or deletes its input
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_acdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_raw_acdc(tmp_path_factory.mktemp("pristine"), num_patients=3)


OVERLAPS = {
    # name: (--input, --output, how), paths relative to the test's folder (the working dir)
    "output-is-input": ("raw", "raw", "is"),
    "trailing-slash": ("raw/", "raw/", "is"),
    "dot-dot": ("raw", "raw/training/../../raw", "is"),
    "absolute-vs-relative": ("ABS/raw", "raw", "is"),
    "output-is-the-training-folder": ("raw", "raw/training", "lies inside"),
    "output-inside-input": ("raw/training", "raw/training/prepared", "lies inside"),
    "output-inside-a-patient": ("raw", "raw/training/patient001", "lies inside"),
    "output-contains-input": ("raw/training", "raw", "contains"),
    "output-is-the-parent": ("raw", ".", "contains"),
    "output-through-a-link": ("raw", "link_to_raw/out", "lies inside"),
    "input-through-a-link": ("link_to_raw", "raw", "is"),
    "output-contains-a-linked-patient": ("linked", "raw", "contains"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("case", sorted(OVERLAPS))
def test_prepare_refuses_an_output_that_overlaps_its_input(
    case, overwrite, raw_acdc, tmp_path, monkeypatch, capsys
):
    shutil.copytree(raw_acdc, tmp_path / "raw")
    (tmp_path / "link_to_raw").symlink_to(tmp_path / "raw")
    # an input whose patient folder is a link into raw/
    (tmp_path / "linked" / "training").mkdir(parents=True)
    (tmp_path / "linked" / "training" / "patient001").symlink_to(
        tmp_path / "raw" / "training" / "patient001"
    )
    monkeypatch.chdir(tmp_path)
    given_input, given_output, how = OVERLAPS[case]
    given_input = given_input.replace("ABS", str(tmp_path))
    before = tree_digest(tmp_path)

    words = ["prepare", "--input", given_input, "--output", given_output]
    with pytest.raises(SystemExit) as exit_info:
        run(*words, *(["--overwrite"] if overwrite else []))
    assert exit_info.value.code == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: The output folder ") and "\n" not in message, message
    assert f"The output folder {given_output.rstrip('/') or '.'}" in message, message
    assert f" {how} the input " in message and "Nothing was written" in message, message
    assert given_input.rstrip("/") in message or "linked/training/patient001" in message
    assert tree_digest(tmp_path) == before  # nothing written, nothing deleted


def test_prepare_refuses_an_output_holding_the_split_file(raw_acdc, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    split = out / "split.json"
    split.write_text(json.dumps({"val": ["patient002"], "test": ["patient003"]}))
    with pytest.raises(SystemExit):
        run("prepare", "--input", raw_acdc, "--output", out, "--split-file", split, "--overwrite")
    message = capsys.readouterr().err
    assert f"The output folder {out} contains the split file {split}" in message
    assert split.is_file()
    # apart from the input, the same command works
    run("prepare", "--input", raw_acdc, "--output", tmp_path / "new", "--split-file", split)
    assert (tmp_path / "new" / "test.list").read_text().split()[0] == "patient003_frame01"


def test_prepare_to_an_unwritable_path_fails_like_fit(raw_acdc, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    message = cli_error("prepare", "--input", raw_acdc, "--output", blocker / "ACDC")
    assert message.startswith(
        f"advmim: error: cannot write the folder of the output (--output) {blocker}: "
    )
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------------------
# 8. NIfTI labels (and channels) on the image's voxel grid
# ----------------------------------------------------------------------------------------
def _resave(path: Path, affine: np.ndarray) -> None:
    """Rewrite ``path`` with the same voxels and another affine."""
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(path).dataobj), affine), path)


def _mirror(affine: np.ndarray, size: int) -> np.ndarray:
    """The affine of the voxels flipped along the first axis: the same box, mirrored."""
    flipped = affine.copy()
    flipped[:3, 0] *= -1
    flipped[:3, 3] += affine[:3, 0] * (size - 1)
    return flipped


def _shift(affine: np.ndarray, mm: float) -> np.ndarray:
    shifted = affine.copy()
    shifted[:3, 3] += mm
    return shifted


def _stretch(affine: np.ndarray) -> np.ndarray:
    """Twice the spacing along the last axis."""
    stretched = affine.copy()
    stretched[:3, 2] *= 2
    return stretched


def _shown(values: np.ndarray) -> str:
    """A vector as a tuple, a matrix as nested lists, at 4 decimals (as the message shows)."""
    rounded = (np.round(np.asarray(values, dtype=np.float64), 4) + 0.0).tolist()
    return str(tuple(rounded) if np.ndim(values) == 1 else rounded)


@pytest.mark.parametrize(
    "what",
    ["mirrored", "shifted", "spacing", "channel-shifted"],
)
def test_a_label_or_channel_off_the_image_grid_is_refused(what, tmp_path):
    channels = 2 if what.startswith("channel") else 1
    root = write_tiny_nifti(tmp_path / "nifti", size=64, channels=channels)
    image = root / "imagesTr" / "case_001_0000.nii.gz"
    label = root / "labelsTr" / "case_001.nii.gz"
    affine = nib.load(image).affine
    spacing = np.asarray(nib.load(image).header.get_zooms())
    bad, wrong = (
        label,
        {
            "mirrored": _mirror(affine, 64),
            "shifted": _shift(affine, 2.0),
            "spacing": _stretch(affine),
            "channel-shifted": _shift(affine, 5.0),
        }[what],
    )
    if what == "channel-shifted":
        bad = root / "imagesTr" / "case_001_0001.nii.gz"
    _resave(bad, wrong)
    expected = {
        "mirrored": [
            f": origin {_shown(wrong[:3, 3])} (image: {_shown(affine[:3, 3])})",
            f"; direction {_shown(np.diag([-1.0, 1.0, 1.0]))} (image: {_shown(np.eye(3))})",
        ],
        "shifted": [f": origin {_shown(wrong[:3, 3])} (image: {_shown(affine[:3, 3])})"],
        "spacing": [
            f": spacing {_shown(spacing * [1, 1, 2])} (image: {_shown(spacing)})",
            f"; affine voxel size {_shown(spacing * [1, 1, 2])} (image: {_shown(spacing)})",
        ],
        "channel-shifted": [f": origin {_shown(wrong[:3, 3])}"],
    }[what]
    message = cli_error("fit", *NIFTI, *common(tmp_path, "bad"), "--data.root", root, *FAST)
    kind = "channel" if what.startswith("channel") else "label"
    assert f"advmim: error: {bad}: {kind} geometry differs from the image {image}: " in message
    for part in expected:
        assert part in message, (part, message)
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def test_raw_acdc_labels_off_the_image_grid_are_refused_by_prepare(raw_acdc, tmp_path, capsys):
    shutil.copytree(raw_acdc, tmp_path / "raw")
    label = tmp_path / "raw" / "training" / "patient002" / "patient002_frame12_gt.nii.gz"
    _resave(label, _mirror(nib.load(label).affine, 32))
    with pytest.raises(SystemExit):
        run("prepare", "--input", tmp_path / "raw", "--output", tmp_path / "out")
    message = capsys.readouterr().err
    image = label.with_name("patient002_frame12.nii.gz")
    assert f"{label}: label geometry differs from the image {image}: origin (" in message
    assert "; direction [[-1.0, 0.0, 0.0]," in message
    assert not (tmp_path / "out").exists()


def test_geometry_within_the_tolerance_is_accepted_and_test_labels_are_checked(tmp_path):
    from advmim_lightning.data import AdvMIMDataModule, DataValidationError

    root = write_tiny_nifti(tmp_path / "nifti", size=32)
    label = root / "labelsTr" / "case_000.nii.gz"
    affine = nib.load(label).affine
    _resave(label, affine * (1 + 1e-6))  # the float noise of another writer
    dm = AdvMIMDataModule(str(root), layout="nifti", image_size=(32, 32), num_workers=0)
    dm.setup("fit")
    test_label = root / "labelsTs" / "case_008.nii.gz"
    _resave(test_label, _shift(nib.load(test_label).affine, 1.0))
    with pytest.raises(DataValidationError, match=rf"{test_label}: label geometry differs"):
        dm.setup("test")


# ----------------------------------------------------------------------------------------
# 9. advmim export to a path it cannot write: the one-line error of `fit`
# ----------------------------------------------------------------------------------------
def test_export_to_an_unwritable_path_fails_like_fit(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    fit_message = cli_error(
        "fit", *QUICKSTART, "--wandb_mode", "disabled", "--runs_dir", blocker / "runs", *FAST
    )
    assert fit_message.startswith("advmim: error: cannot write the run folder (--runs_dir/")

    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"the output is checked before the checkpoint is read")
    message = cli_error("export", checkpoint, blocker / "sub" / "model.pt")
    assert message.startswith(
        f"advmim: error: cannot write the export folder {blocker}/sub: Not a directory"
    )
    assert fit_message.splitlines()[1] == message.splitlines()[1]
    folder = tmp_path / "exports"
    folder.mkdir()
    message = cli_error("export", checkpoint, folder)
    assert f"cannot write the export file {folder}: it is a folder" in message
    message = cli_error("export", checkpoint, tmp_path / "model.pt2", "--torch_export")
    assert "which would replace the export" in message
    message = cli_error("export", tmp_path / "nope.ckpt", tmp_path / "out.pt")
    assert f"checkpoint {tmp_path / 'nope.ckpt'} does not exist" in message
    assert not (tmp_path / "out.pt").exists() and not list(folder.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_fails_like_fit(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        message = cli_error("export", tmp_path / "last.ckpt", folder / "model.pt")
    finally:
        folder.chmod(0o700)
    assert f"cannot write the export folder {folder}: Permission denied" in message


# ----------------------------------------------------------------------------------------
# 10. ACDC lists: one patient, one split
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lists", "patient", "first", "second"),
    [
        (
            {"val.list": ["patient005_frame01"], "test.list": ["patient005_frame12"]},
            "patient005",
            "val.list: patient005_frame01",
            "test.list: patient005_frame12",
        ),
        (
            {"val.list": ["patient005_frame01", "patient005_frame12", "patient002_frame12"]},
            "patient002",
            "train_slices.list: patient002_frame01_slice_0",
            "val.list: patient002_frame12",
        ),
        (
            {"test.list": ["patient006_frame01", "patient004_frame01"]},
            "patient004",
            "train_slices.list: patient004_frame01_slice_0",
            "test.list: patient004_frame01",
        ),
    ],
    ids=["val-and-test", "train-and-val", "train-and-test"],
)
def test_acdc_refuses_a_patient_in_two_splits(lists, patient, first, second, tmp_path):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64)
    for name, names in lists.items():
        (root / name).write_text("".join(f"{n}\n" for n in names))
    base = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY, *common(tmp_path, "bad")]
    message = cli_error("fit", *base, "--data.root", root, "--data.labeled_cases", "2", *FAST)
    assert f"patient '{patient}' is in " in message, message
    assert first in message and second in message, message
    assert "expected each patient in one split" in message
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------
# 12. The data's channel count reaches networks given by class_path
# ----------------------------------------------------------------------------------------
def test_two_channel_nifti_trains_with_the_quickstart_networks(tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti", size=64, channels=2)
    words = [*QUICKSTART, *common(tmp_path), "--data.layout", "nifti", "--data.root", root]
    words = [str(w) for w in words]
    cli = build_cli(words, run=False)
    assert cli.datamodule.in_channels == 2 and cli.model.settings.in_channels == 2
    assert cli.model.cnn.in_channels == cli.model.transformer.in_channels == 2
    assert cli.model.cnn.in_block.conv1.in_channels == 2
    run("fit", *words, "--model.max_iterations", "1", "--trainer.limit_val_batches", "0")
    last = tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last)
    assert checkpoint["hyper_parameters"]["cnn"]["init_args"]["in_channels"] == 2
    assert checkpoint["hyper_parameters"]["transformer"]["init_args"]["in_channels"] == 2
    run("test", *words, "--ckpt_path", last, "--trainer.limit_test_batches", "1")

    # networks left at their default (None) and one given as a bare class_path get it too
    for extra in (
        ["-c", ROOT / "configs/nifti/advmim.yaml", "--data.image_size", "[224, 224]",
         "--model.transformer.init_args.pretrained", "null"],
        [*QUICKSTART, "--model.cnn", "advmim_lightning.networks.UNet", "--model.transformer",
         "null", "--data.image_size", "[224, 224]"],
    ):  # fmt: skip
        words = [*extra, *common(tmp_path), "--data.layout", "nifti", "--data.root", root]
        cli = build_cli([str(w) for w in words], run=False)
        assert cli.model.cnn.in_channels == cli.model.transformer.in_channels == 2


def test_networks_built_from_the_cli_keep_their_seeded_weights():
    """The cnn is built before the transformer, right after the seed, as the module does."""
    from lightning.pytorch import seed_everything

    from advmim_lightning.networks import SwinUNet, UNet

    for words in (
        [*QUICKSTART, "--wandb_mode", "disabled"],
        ["-c", TINY, "--model.cnn", "null", "--model.transformer", "null", "--data.image_size",
         "[224, 224]", "--wandb_mode", "disabled"],
    ):  # fmt: skip
        cli = build_cli([str(w) for w in words], run=False)
        seed_everything(0)
        cnn, transformer = UNet(**cli.model.cnn.config), SwinUNet(**cli.model.transformer.config)
        for built, expected in ((cli.model.cnn, cnn), (cli.model.transformer, transformer)):
            for key, value in expected.state_dict().items():
                assert torch.equal(built.state_dict()[key], value), key


def test_declared_channels_without_their_files_are_a_data_error(tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti", size=64, channels=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    words = [*QUICKSTART, *common(tmp_path, "bad"), "--data.layout", "nifti"]
    message = cli_error("fit", *words, "--data.root", root, *FAST)
    assert message.startswith(
        f"advmim: error: Missing image file(s) {root}/imagesTr/case_000_0001.nii.gz, "
        f"{root}/imagesTr/case_001_0001.nii.gz, "
    ), message
    assert "and 3 more" in message  # 8 training cases, 5 shown
    assert f"{root}/dataset.json declares 2 channels ['T1', 'T2']" in message
    assert "input channels" not in message
