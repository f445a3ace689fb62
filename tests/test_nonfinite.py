"""``NonFiniteMonitor``: which loss terms and trained parts it names, and when it stays quiet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advmim_lightning.nonfinite import NonFiniteMonitor, parts_nonfinite


def finite_terms() -> dict[str, torch.Tensor]:
    return {"sup_ce_cnn": torch.tensor(0.5), "sup_dice_cnn": torch.tensor(0.25)}


def test_parts_nonfinite_looks_at_parameters_and_float_buffers_of_each_part():
    clean, broken_weight, broken_statistic = (
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)) for _ in range(3)
    )
    with torch.no_grad():
        broken_weight[0].weight[1, 0, 2, 2] = float("nan")
    broken_statistic[1].running_var[0] = float("inf")
    flags = parts_nonfinite(
        {"clean": clean, "weight": broken_weight, "statistic": broken_statistic}
    )
    assert {name: bool(flag) for name, flag in flags.items()} == {
        "clean": False,
        "weight": True,
        "statistic": True,
    }
    assert all(flag.shape == () for flag in flags.values())


def test_finite_terms_and_parts_pass_and_start_a_new_window():
    monitor = NonFiniteMonitor(first_iteration=4)
    parts = {"cnn": torch.tensor(False)}
    monitor.flag(finite_terms(), ["case1"], 4, parts)
    monitor.check()
    monitor.flag(finite_terms(), ["case2"], 5, {"cnn": torch.tensor(True)})
    with pytest.raises(FloatingPointError) as err:
        monitor.check()
    assert str(err.value).startswith(
        "non-finite weights in iterations 5..5 (0-based): weights or batch-norm statistics "
        "of cnn after the update (every loss term was finite: the update overflowed); "
        "batches held cases case2."
    )


def test_a_nonfinite_term_and_part_are_both_named():
    monitor = NonFiniteMonitor()
    terms = finite_terms() | {"sup_dice_cnn": torch.tensor(float("nan"))}
    monitor.flag(finite_terms(), ["a"], 0, {"transformer": torch.tensor(False)})
    monitor.flag(terms, ["b"], 1, {"transformer": torch.tensor(True)})
    with pytest.raises(FloatingPointError) as err:
        monitor.check()
    message = str(err.value)
    assert message.startswith(
        "non-finite loss in iterations 0..1 (0-based): terms sup_dice_cnn; weights or "
        "batch-norm statistics of transformer after the update; batches held cases a, b."
    )
    assert "every loss term was finite" not in message
