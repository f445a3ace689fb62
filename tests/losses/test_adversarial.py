"""Tests for advmim_lightning.losses.adversarial."""

from __future__ import annotations

import pytest
import torch

from advmim_lightning.losses import lsgan_loss


def test_lsgan_hand_computed():
    prediction = torch.tensor([0.5, 2.0, 0.0]).view(1, 1, 1, 3)
    assert lsgan_loss(prediction, True).item() == pytest.approx((0.25 + 1.0 + 1.0) / 3)
    assert lsgan_loss(prediction, False).item() == pytest.approx((0.25 + 4.0 + 0.0) / 3)


def test_lsgan_optimum_and_low_precision():
    assert lsgan_loss(torch.ones(2, 1, 7, 7), True).item() == 0.0
    assert lsgan_loss(torch.zeros(2, 1, 7, 7), False).item() == 0.0
    half = lsgan_loss(torch.full((2, 1, 7, 7), 0.5, dtype=torch.bfloat16), True)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(0.25)


def test_lsgan_gradient_and_bool_check():
    prediction = torch.tensor([0.5, 2.0], requires_grad=True)
    lsgan_loss(prediction, True).backward()
    # d/dx mean((x - 1)^2) = 2 (x - 1) / n
    assert torch.allclose(prediction.grad, torch.tensor([-0.5, 1.0]))
    with pytest.raises(TypeError, match="target_is_real must be a Python bool, got Tensor"):
        lsgan_loss(prediction, torch.tensor(True))  # type: ignore[arg-type]
