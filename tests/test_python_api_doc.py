"""Every ```python block of the README's "Python API" section and of docs/python-api.md runs.

The blocks run in order (the README's first), in one namespace named ``__main__`` (as in a
script), inside a temporary working directory holding a copy of ``configs/`` (the doc's
examples run from the repository root), and what the text says they print is checked.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_DOC = ROOT / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_api_section(text: str) -> str:
    """The README's "## Python API" section, up to the next level-2 heading."""
    start = text.index("## Python API\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return BLOCK.findall(text)


def test_block_extraction_finds_only_python_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\nz = 3\n"]


def test_every_python_block_of_the_doc_runs(tmp_path, monkeypatch, capsys):
    sources = [
        (README, python_blocks(python_api_section(README.read_text()))),
        (API_DOC, python_blocks(API_DOC.read_text())),
    ]
    blocks = [(doc, index, block) for doc, found in sources for index, block in enumerate(found)]
    assert [len(found) for _, found in sources] == [1, 5]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # the doc runs from the repo root
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    namespace: dict = {"__name__": "__main__"}
    for doc, index, source in blocks:
        try:
            exec(compile(source, f"{doc.name}[python block {index}]", "exec"), namespace)
        except Exception as err:  # name the block in the failure
            pytest.fail(f"python block {index} of {doc} failed: {type(err).__name__}: {err}")
    out = capsys.readouterr().out
    assert "val/dice_mean" in out  # block 0 validated
    # the hand-written loop trained the plain model and predicted a volume
    assert "iteration 4: loss " in out and "['cnn', 'ensemble', 'transformer'] (3, 80, 96)" in out
    assert "UNet SwinUNet (80, 80)\nruns/quickstart\n" in out  # block 1 read the config
    assert "'class_path': '__main__.PixelMaskedSegmenter', 'init_args': None" in out
    assert (tmp_path / "custom_cnn.ckpt").is_file()
    assert re.search(r"supervised \d+\.\d{3} pseudo \d+\.\d{3} adversarial", out)
    assert namespace["tokens"].shape == (4, 16, 16)
