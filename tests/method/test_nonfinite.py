"""``NonFiniteMonitor``: which loss terms and trained parts it names, and when it stays quiet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advmim_lightning.method.nonfinite import NonFiniteMonitor


def finite_terms() -> dict[str, torch.Tensor]:
    return {"sup_ce_cnn": torch.tensor(0.5), "sup_dice_cnn": torch.tensor(0.25)}


def part() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


def test_the_parameters_and_float_buffers_of_each_part_are_checked():
    clean, broken_weight, broken_statistic = part(), part(), part()
    monitor = NonFiniteMonitor(
        parts={"clean": clean, "weight": broken_weight, "statistic": broken_statistic}
    )
    with torch.no_grad():
        broken_weight[0].weight[1, 0, 2, 2] = float("nan")
    broken_statistic[1].running_var[0] = float("inf")  # the update happened after the monitor
    monitor.flag(finite_terms(), ["case1"], 0)
    with pytest.raises(FloatingPointError) as err:
        monitor.check()
    assert "batch-norm statistics of weight, statistic after the update" in str(err.value)
    assert "clean" not in str(err.value)


def test_finite_terms_and_parts_pass_and_start_a_new_window():
    cnn = part()
    monitor = NonFiniteMonitor(first_iteration=4, parts={"cnn": cnn})
    monitor.flag(finite_terms(), ["case1"], 4)
    monitor.check()
    with torch.no_grad():
        cnn[0].bias[0] = float("inf")
    monitor.flag(finite_terms(), ["case2"], 5)
    with pytest.raises(FloatingPointError) as err:
        monitor.check()
    assert str(err.value).startswith(
        "non-finite weights in iterations 5..5 (0-based): weights or batch-norm statistics "
        "of cnn after the update (every loss term was finite: the update overflowed); "
        "batches held cases case2."
    )


def test_a_nonfinite_term_and_part_are_both_named():
    transformer = part()
    monitor = NonFiniteMonitor(parts={"transformer": transformer})
    terms = finite_terms() | {"sup_dice_cnn": torch.tensor(float("nan"))}
    monitor.flag(finite_terms(), ["a"], 0)
    with torch.no_grad():
        transformer[0].weight[0, 0, 0, 0] = float("nan")
    monitor.flag(terms, ["b"], 1)
    with pytest.raises(FloatingPointError) as err:
        monitor.check()
    message = str(err.value)
    assert message.startswith(
        "non-finite loss in iterations 0..1 (0-based): terms sup_dice_cnn; weights or "
        "batch-norm statistics of transformer after the update; batches held cases a, b."
    )
    assert "every loss term was finite" not in message
