"""Data reliability through the command line and as a Lightning user (Reliability III).

Each test runs what a user runs (``advmim ...`` through ``main([...])``, or the data module
with a Lightning ``Trainer``-style call order) on data written in ``tmp_path``, and checks the
message names the file, the value found and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advmim_lightning.data.prepare import MANIFEST_NAME
from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_raw_acdc
from cli.test_cli import ROOT, TINY, cli_error, common, run

ACDC = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY]
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
