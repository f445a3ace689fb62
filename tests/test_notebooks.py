"""The notebooks run end to end in a venv kernel (nbclient, as nbmake does) and are stored clean.

Each notebook is executed as saved (its short parameters) in a temporary working directory, so
its run folder (``runs/...``, relative to the working directory) lands in ``tmp_path``; the
artefacts it leaves there are checked afterwards.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import nbformat
import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quickstart.ipynb", "own_data.ipynb")
KERNEL_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    # the kernel's own inline backend, whatever the caller's shell sets: figures become outputs
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


def parameters_index(notebook: nbformat.NotebookNode) -> int:
    """Index of the cell tagged ``parameters`` (papermill's convention)."""
    for index, cell in enumerate(notebook.cells):
        if "parameters" in cell.metadata.get("tags", []):
            return index
    raise AssertionError("the notebook has no cell tagged 'parameters'")


def execute(
    name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, **parameters: Any
) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` in ``workdir`` and return it with its outputs.

    ``parameters`` are injected as a cell after the parameters cell, as papermill does.

    Raises:
        nbclient.exceptions.CellExecutionError: When a cell raises.
    """
    from nbclient import NotebookClient

    for key, value in KERNEL_ENV.items():
        monkeypatch.setenv(key, value)  # the kernel process inherits the environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters:
        source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
        notebook.cells.insert(parameters_index(notebook) + 1, cell)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def stream_text(notebook: nbformat.NotebookNode, name: str = "stdout") -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == name
    )


def count_images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_clean_with_a_parameters_cell_first(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in code_cells:
        assert cell.outputs == [], f"{name}: stored with outputs: {cell.source[:60]!r}"
        assert cell.execution_count is None, f"{name}: stored with execution counts"
    assert code_cells[0] is notebook.cells[parameters_index(notebook)]
    assert "runs/" in code_cells[0].source  # the run folder sits under the git-ignored runs/


def test_quickstart_trains_plots_and_prints_the_metrics_table(tmp_path, monkeypatch):
    notebook = execute("quickstart.ipynb", tmp_path, monkeypatch)
    params = {}
    exec(notebook.cells[parameters_index(notebook)].source, params)

    log_dirs = sorted((tmp_path / "runs" / "quickstart" / "logs").glob("version_*"))
    assert len(log_dirs) == 1
    with (log_dirs[0] / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r.get("train/loss")]
    assert [float(r["train/iteration"]) for r in train] == [
        float(i) for i in range(1, params["ITERATIONS"] + 1)
    ]
    for term in ("sup_ce", "cross_teaching", "masked_pseudo_ce", "adv", "disc"):
        for network in ("cnn", "transformer"):
            assert all(np.isfinite(float(r[f"train/{term}_{network}"])) for r in train)
    assert any(r.get("val/dice_mean") for r in rows)
    with (log_dirs[0] / "test_metrics.csv").open() as handle:
        test_rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in test_rows][-1] == "mean" and len(test_rows) >= 2

    # batch, masked domain, loss curves, predictions
    assert count_images(notebook) == 4
    out = stream_text(notebook)
    assert "net(x, mask=m) -> (1, 4, 64, 64) (1, 4, 64, 64)" in out
    table = out[out.index("class ") :].splitlines()
    assert table[0].split() == ["class", "dice", "hd95", "asd", "nsd"]
    assert [line.split()[0] for line in table[1:5]] == ["RV", "Myo", "LV", "mean"]
    assert all(len(line.split()) == 5 for line in table[1:5])
    assert "Dice     transformer         cnn    ensemble" in out
    assert "case_id       dice_mean  hd95_mean   asd_mean   nsd_mean" in out


def test_own_data_validates_trains_and_writes_nifti_with_the_input_affine(tmp_path, monkeypatch):
    notebook = execute("own_data.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "runs" / "own_data"
    root = work / "Dataset001_Heart"
    assert (root / "dataset.json").is_file()
    assert len(list((root / "imagesTr").glob("*_0000.nii.gz"))) == 8
    assert len(list((root / "labelsTr").glob("*.nii.gz"))) == 4

    out = stream_text(notebook)
    assert "DataValidationError: runs/own_data/broken_label/labelsTr/heart_001.nii.gz" in out
    assert "label value(s) [7] outside [0, 4)" in out
    assert "heart_005_0000.nii.gz: image has 4 non-finite voxel(s)" in out

    written = sorted((work / "predictions").glob("*.nii.gz"))
    assert [p.name for p in written] == ["heart_100.nii.gz", "heart_101.nii.gz"]
    for path in written:
        source = nib.load(root / "imagesTs" / path.name.replace(".nii.gz", "_0000.nii.gz"))
        prediction = nib.load(path)
        assert prediction.shape == source.shape == (80, 80, 3)
        np.testing.assert_allclose(prediction.affine, source.affine)
        labels = np.asarray(prediction.dataobj)
        assert labels.dtype == np.uint8 and labels.max() < 4
    assert count_images(notebook) == 1


@pytest.mark.slow
def test_quickstart_at_the_quickstart_config_sizes_learns(tmp_path, monkeypatch):
    """The sizes of configs/quickstart.yaml for 150 iterations (~4 min on one thread).

    Measured: mean training loss 3.96 over the first 20 iterations, 2.72 over the last 20; the
    U-Net's validation Dice 0.28 (the Swin-UNet, from scratch, still predicts background).
    """
    notebook = execute(
        "quickstart.ipynb", tmp_path, monkeypatch, SMALL=False, ITERATIONS=150, VAL_EVERY=150
    )
    log_dir = tmp_path / "runs" / "quickstart" / "logs" / "version_0"
    with (log_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.85 * np.mean(losses[:20])
    out = stream_text(notebook)
    line = next(line for line in out.splitlines() if line.startswith("mean Dice: transformer"))
    assert float(line.rsplit("CNN ", 1)[1]) > 0.15
