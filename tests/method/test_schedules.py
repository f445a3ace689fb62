"""Tests for advmim_lightning.method.schedules."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from advmim_lightning.method.schedules import (
    ctct_consistency_weight,
    poly_factor,
    poly_lr,
    sigmoid_rampup,
)


def test_poly_lr_known_points():
    assert poly_lr(0.05, 0, 30_000) == 0.05
    assert poly_lr(0.05, 15_000, 30_000) == pytest.approx(0.05 * 0.5**0.9)
    assert poly_lr(0.01, 7_500, 30_000, power=1.0) == pytest.approx(0.0075)
    assert poly_lr(0.05, 30_000, 30_000) == 0.0
    assert poly_lr(0.05, 40_000, 30_000) == 0.0  # clamped, never negative or complex


def test_poly_factor_drives_lambda_lr():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(poly_factor, max_iterations=10)
    )
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([poly_lr(0.05, i, 10) for i in range(5)])
    assert poly_factor(5, 10) == pytest.approx(0.5**0.9)


def test_poly_rejects_bad_arguments():
    with pytest.raises(ValueError, match="iteration must be >= 0, got -1"):
        poly_factor(-1, 10)
    with pytest.raises(ValueError, match="max_iterations must be > 0, got 0"):
        poly_lr(0.01, 0, 0)
    with pytest.raises(ValueError, match=r"power must be >= 0, got -0\.5"):
        poly_factor(0, 10, power=-0.5)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 200) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(100, 200) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(200, 200) == 1.0
    assert sigmoid_rampup(500, 200) == 1.0
    assert sigmoid_rampup(-3, 200) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(7, 0) == 1.0
    with pytest.raises(ValueError, match="rampup_length must be >= 0, got -1"):
        sigmoid_rampup(0, -1)


def test_ctct_consistency_weight_values():
    assert ctct_consistency_weight(0) == pytest.approx(0.1 * math.exp(-5.0))
    # Piecewise constant over 150 iterations.
    assert ctct_consistency_weight(149) == ctct_consistency_weight(0)
    assert ctct_consistency_weight(150 * 100) == pytest.approx(math.exp(-5 * (1 - 0.5) ** 2) * 0.1)
    assert ctct_consistency_weight(150 * 200) == pytest.approx(0.1)
    assert ctct_consistency_weight(150 * 200 + 1) == pytest.approx(0.1)
    assert ctct_consistency_weight(10**6) == pytest.approx(0.1)
    assert ctct_consistency_weight(300, weight=1.0, rampup_length=4, iterations_per_unit=100) == (
        pytest.approx(math.exp(-5 * 0.25**2))
    )
    assert ctct_consistency_weight(0, rampup_length=0) == pytest.approx(0.1)


def test_ctct_consistency_weight_rejects_bad_arguments():
    with pytest.raises(ValueError, match="iteration must be >= 0, got -5"):
        ctct_consistency_weight(-5)
    with pytest.raises(ValueError, match="iterations_per_unit must be > 0, got 0"):
        ctct_consistency_weight(10, iterations_per_unit=0)
