"""A checkpoint stores the iteration count once, and its weights under the networks' names."""

from __future__ import annotations

from pathlib import Path

import torch

from advmim_lightning import AdvMIMModule
from tiny import fit, make_module

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "advmim.ckpt"


def _counts(tree, where=""):
    """Every entry named like an iteration count, anywhere in a checkpoint."""
    found = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key) in ("iteration", "next_iteration"):
                found[path] = value
            found.update(_counts(value, path))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.update(_counts(value, f"{where}[{index}]"))
    return found


def test_a_new_checkpoint_stores_the_iteration_count_once(tmp_path):
    module = make_module("advmim", max_iterations=2)
    trainer = fit(module, 2, default_root_dir=tmp_path)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert list(_counts(checkpoint)) == ["state_dict.iteration"]
    assert int(checkpoint["state_dict"]["iteration"]) == 2
    assert "advmim" not in checkpoint
    # the model's networks keep their published names: cnn.*, transformer.*, disc_*.*
    prefixes = {key.split(".")[0] for key in checkpoint["state_dict"]}
    assert prefixes == {"cnn", "transformer", "disc_cnn", "disc_transformer", "iteration"}


def test_an_earlier_checkpoint_with_more_copies_loads_strictly_with_its_count():
    restored = AdvMIMModule.load_from_checkpoint(GOLDEN, map_location="cpu")
    assert restored.iteration == 3 and restored.restored_from_checkpoint
    stored = torch.load(GOLDEN, weights_only=True)["state_dict"]
    for key, value in restored.state_dict().items():
        assert torch.equal(value, stored[key]), key
