"""Tests for advmim_lightning.losses.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advmim_lightning.losses import confidence_weighted_cross_entropy, cross_entropy_loss

# 1 x 2 x 1 x 2 logits: pixel a = [0, 0] (target 0, CE ln 2); pixel b = [ln 3, 0] (target 1,
# p = 1/4, CE ln 4).
LOGITS = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])
TARGET = torch.tensor([[[0, 1]]])


def test_weighted_ce_hand_computed():
    weight = torch.tensor([[[1.0, 3.0]]])
    expected = (math.log(2.0) + 3.0 * math.log(4.0)) / 4.0  # = 7 ln 2 / 4
    got = confidence_weighted_cross_entropy(LOGITS, TARGET, weight)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_with_unit_weights_is_plain_mean_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    got = confidence_weighted_cross_entropy(logits, target, torch.ones(2, 8, 8))
    assert got.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # Scaling every weight by a constant changes nothing (normalised by sum(w)).
    scaled = confidence_weighted_cross_entropy(logits, target, torch.full((2, 8, 8), 0.3))
    assert scaled.item() == pytest.approx(got.item(), rel=1e-5)


def test_weighted_ce_all_zero_weights_is_zero_with_finite_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    loss = confidence_weighted_cross_entropy(logits, TARGET, torch.zeros(1, 1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_weighted_ce_low_precision_and_meta():
    weight = torch.tensor([[[1.0, 3.0]]])
    got = confidence_weighted_cross_entropy(LOGITS.bfloat16(), TARGET, weight.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(7 * math.log(2.0) / 4, rel=1e-2)
    meta = confidence_weighted_cross_entropy(
        torch.empty(2, 3, 4, 4, device="meta"),
        torch.empty(2, 4, 4, dtype=torch.long, device="meta"),
        torch.empty(2, 4, 4, device="meta"),
    )
    assert meta.shape == ()


def test_weighted_ce_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"must have shape \(1, 1, 2\)"):
        confidence_weighted_cross_entropy(LOGITS, TARGET, torch.ones(1, 2))
    with pytest.raises(TypeError, match="integer class-index tensor"):
        confidence_weighted_cross_entropy(LOGITS, TARGET.float(), torch.ones(1, 1, 2))


def test_cross_entropy_loss_equals_the_reduced_torch_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.bfloat16)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    got = cross_entropy_loss(logits, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.cross_entropy(logits.float(), target), rtol=1e-6, atol=1e-6)
    # two classes, one pixel each, hand-computed: -log softmax
    hand = cross_entropy_loss(torch.tensor([[[[0.0]], [[math.log(3.0)]]]]), torch.tensor([[[1]]]))
    torch.testing.assert_close(hand, torch.tensor(-math.log(3 / 4)))


def test_cross_entropy_loss_names_a_shape_or_dtype_problem():
    with pytest.raises(ValueError, match=r"cross_entropy_loss: target must have shape \(1, 2, 2\)"):
        cross_entropy_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"integer class-index tensor, got dtype torch\.float32"):
        cross_entropy_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))
