"""The saved iteration counts of a checkpoint: which one owns the run, which may differ."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from advmim_lightning.run.checkpoints import iteration_count_conflict, saved_iteration_counts

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "advmim.ckpt"


def test_the_golden_checkpoint_stores_one_count_everywhere():
    checkpoint = torch.load(GOLDEN, weights_only=True)
    counts = saved_iteration_counts(checkpoint)
    assert next(iter(counts)) == "advmim.iteration"  # the module's count comes first
    assert set(counts.values()) == {3} and len(counts) == 4
    assert iteration_count_conflict(checkpoint, GOLDEN) is None


def test_a_data_position_one_ahead_is_a_batch_in_progress_and_more_is_refused():
    checkpoint = torch.load(GOLDEN, weights_only=True)
    ahead = copy.deepcopy(checkpoint)
    ahead["AdvMIMDataModule"]["next_iteration"] = 4  # e.g. a SLURM requeue save mid-step
    ahead["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["next_iteration"] = 4
    assert iteration_count_conflict(ahead, "a.ckpt") is None
    for edit in (5, 2):
        edited = copy.deepcopy(checkpoint)
        edited["AdvMIMDataModule"]["next_iteration"] = edit
        message = iteration_count_conflict(edited, "a.ckpt")
        assert message is not None and "a.ckpt" in message
        assert "advmim.iteration = 3" in message
        assert f"AdvMIMDataModule.next_iteration = {edit}" in message
    weights = copy.deepcopy(checkpoint)
    weights["state_dict"]["iteration"] = torch.tensor(4)  # the module's own copies never differ
    assert "state_dict['iteration'] = 4" in iteration_count_conflict(weights, "a.ckpt")
