"""``make notebooks``: execute ``notebooks/*.ipynb`` in place, in the user setting, outputs kept.

Each notebook runs top to bottom in a fresh ``python3`` kernel whose working directory is
``notebooks/`` (as in Jupyter), so its runs land in ``notebooks/runs/`` (git-ignored) and the
stored outputs show relative paths only. The notebook is then written back with its outputs
and a stamp in its metadata (``advmim``): a hash of its code cells and of the files it reads
(``configs/quickstart.yaml``), which ``tests/test_notebooks.py`` compares with the current
ones, so a notebook or config edited without running this again fails the tests. Usage::

    python scripts/run_notebooks.py [quickstart.ipynb own_data.ipynb]

The venv, the repository and the home folder are replaced by ``<venv>``, ``<repository>`` and
``~`` in the outputs; it raises an error, and writes nothing, when a cell fails or an output
still names one of them or ``/tmp/``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Files whose content the stored outputs depend on, besides the notebook's code.
INPUTS = ("configs/quickstart.yaml",)
KERNEL_ENV = {
    # one intra-op thread for what the notebook does not set itself (the `advmim compare`
    # subprocesses): threads that wait for each other burn a shared CPU
    "OMP_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    # the kernel's own inline backend, whatever the caller's shell sets: figures become outputs
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}
#: Machine-specific locations replaced in stored outputs (a warning names its source file).
SCRUB = ((sys.prefix, "<venv>"), (str(ROOT), "<repository>"), (str(Path.home()), "~"))
#: Text that must not appear in stored outputs once scrubbed.
PRIVATE = (str(ROOT), str(Path.home()), sys.prefix, "/tmp/")


def code_hash(notebook: nbformat.NotebookNode) -> str:
    """SHA-256 of the notebook's code cells, in order."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def input_hashes(root: Path = ROOT) -> dict[str, str]:
    """SHA-256 of each file of :data:`INPUTS`."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in INPUTS}


def scrub(notebook: nbformat.NotebookNode) -> None:
    """Replace the locations of :data:`SCRUB` in stream outputs and plain-text results."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for owner, key in ((output, "text"), (output.get("data", {}), "text/plain")):
                if isinstance(owner.get(key), str):
                    for path, name in SCRUB:
                        owner[key] = owner[key].replace(path, name)


def private_text(notebook: nbformat.NotebookNode, private: tuple[str, ...] = PRIVATE) -> list[str]:
    """The outputs (as ``cell N: text``) that contain one of ``private``."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            texts = [output.get("text", ""), *output.get("data", {}).get("text/plain", [])]
            texts += output.get("traceback", [])
            for text in texts:
                text = "".join(text)
                for word in private:
                    if word and word in text:
                        found.append(f"cell {index}: {word!r} in {text[:200]!r}")
    return found


def final_lines(notebook: nbformat.NotebookNode, start: str = "final validation Dice") -> list[str]:
    """The printed lines that begin with ``start``."""
    return [
        line
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        for line in output.get("text", "").splitlines()
        if line.startswith(start)
    ]


def execute(path: Path) -> tuple[float, nbformat.NotebookNode]:
    """Run the notebook at ``path`` and store it with its outputs.

    Returns:
        The minutes taken and the executed notebook.

    Raises:
        nbclient.exceptions.CellExecutionError: When a cell raises (the file is not written).
        RuntimeError: When an output shows a machine-specific path (the file is not written).
    """
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=3600,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the stored file
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.monotonic()
    client.execute()
    minutes = (time.monotonic() - start) / 60
    scrub(notebook)
    leaks = private_text(notebook)
    if leaks:
        raise RuntimeError(
            f"{path.name}: outputs name machine-specific paths:\n" + "\n".join(leaks)
        )
    notebook.metadata["advmim"] = {"code_sha256": code_hash(notebook), "inputs": input_hashes()}
    nbformat.write(notebook, path)
    return minutes, notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("names", nargs="*", help="notebooks in notebooks/ (default: all)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    os.environ.update(KERNEL_ENV)  # the kernel inherits the environment
    os.environ.pop("ADVMIM_NOTEBOOK_SMOKE", None)  # the stored outputs are the user setting's
    for name in names:
        path = NOTEBOOKS / name
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        minutes, notebook = execute(path)
        size = path.stat().st_size / 1024
        print(f"  done in {minutes:.1f} min, stored with outputs ({size:.0f} KiB)", flush=True)
        for line in final_lines(notebook):
            print(f"  {line}", flush=True)


if __name__ == "__main__":
    main()
