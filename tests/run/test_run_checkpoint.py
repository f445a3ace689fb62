"""``RunCheckpoint``: no non-finite weights saved, and a crash while saving keeps ``last.ckpt``."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tiny import PairedBatches, PoisonedAt, fit, make_module


# Initial weights decide how the overflowing batch shows first: seed 0 gives a non-finite loss at
# iteration 2, seed 2 finite losses at iteration 2 but an update that makes the weights
# non-finite (its loss turns non-finite only at iteration 3, after a save).
@pytest.mark.parametrize(("seed", "reported"), [(0, "loss"), (2, "weights")])
def test_a_checkpoint_between_logging_iterations_never_saves_nonfinite_weights(
    tmp_path, seed, reported
):
    from advmim_lightning.run.run_checkpoint import RunCheckpoint

    torch.manual_seed(seed)
    module = make_module("advmim")
    checkpoints = RunCheckpoint(dirpath=tmp_path, save_last=True, every_n_iterations=1)
    with pytest.raises(FloatingPointError, match=r"iterations 2\.\.2 \(0-based\)") as err:
        # no logging iteration before the poisoned one: only the save can notice it
        fit(module, dataset=PoisonedAt(5, {2}), log_every_n_steps=50, callbacks=[checkpoints])
    assert str(err.value).startswith(f"non-finite {reported} in iterations 2..2")
    if reported == "weights":
        assert "every loss term was finite: the update overflowed" in str(err.value)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["state_dict"]["iteration"] == 2  # saved after iterations 0 and 1, not after 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_crash_while_saving_leaves_the_previous_last_checkpoint_intact(tmp_path, monkeypatch):
    from advmim_lightning.run.run_checkpoint import RunCheckpoint

    saves = []
    real_save = pl.Trainer.save_checkpoint

    def save_then_die_on_the_second(trainer, filepath, *args, **kwargs):
        saves.append(str(filepath))
        if len(saves) == 2:  # half a file written, then the process "dies"
            with open(filepath, "wb") as handle:
                handle.write(b"PK\x03\x04 half a checkpoint")
            raise SystemExit("killed while saving")
        return real_save(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_then_die_on_the_second)
    module = make_module("ctct")
    checkpoints = RunCheckpoint(dirpath=tmp_path, save_last=True, every_n_iterations=1)
    with pytest.raises(SystemExit, match="killed while saving"):
        fit(module, dataset=PairedBatches(4), log_every_n_steps=1, callbacks=[checkpoints])
    assert all(path.endswith(".tmp") for path in saves)  # written aside, renamed when complete
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["state_dict"]["iteration"] == 1
