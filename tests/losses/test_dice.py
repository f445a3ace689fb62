"""Tests for advmim_lightning.losses.dice: hand-computed values and the METHOD.md formula."""

from __future__ import annotations

import pytest
import torch

from advmim_lightning.losses import dice_loss, weighted_dice_loss

# 1 x 2 x 2 x 2 probabilities: class 1 = P1, class 0 = 1 - P1; target [[1, 0], [1, 0]].
P1 = torch.tensor([[0.9, 0.2], [0.6, 0.1]])
PROBS = torch.stack([1.0 - P1, P1]).unsqueeze(0)
TARGET = torch.tensor([[[1, 0], [1, 0]]])


def reference_dice(probs: torch.Tensor, target: torch.Tensor, weight=None, smooth=1e-5):
    """Explicit per-class loop over METHOD.md's formula (the SSL4MIS DiceLoss)."""
    if weight is None:
        weight = torch.ones_like(target, dtype=torch.float64)
    probs, weight = probs.double(), weight.double()
    losses = []
    for c in range(probs.shape[1]):
        p = probs[:, c]
        t = (target == c).double()
        intersect = (weight * p * t).sum()
        denominator = (weight * p * p).sum() + (weight * t * t).sum()
        losses.append(1.0 - (2.0 * intersect + smooth) / (denominator + smooth))
    return sum(losses) / len(losses)


def test_dice_loss_hand_computed_without_smoothing():
    # class 0: 2*1.7 / (1.62 + 2); class 1: 2*1.5 / (1.22 + 2)
    expected = ((1 - 3.4 / 3.62) + (1 - 3.0 / 3.22)) / 2
    assert dice_loss(PROBS, TARGET, smooth=0.0).item() == pytest.approx(expected, abs=1e-6)


def test_dice_loss_hand_computed_with_default_smoothing():
    s = 1e-5
    expected = ((1 - (3.4 + s) / (3.62 + s)) + (1 - (3.0 + s) / (3.22 + s))) / 2
    assert dice_loss(PROBS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_dice_loss_perfect_one_hot_is_zero_and_background_counts():
    target = torch.tensor([[[0, 1], [2, 2]]])
    probs = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(probs, target).item() == pytest.approx(0.0, abs=1e-6)
    # A class absent from target and prediction: (0 + s) / (0 + s) = 1, so loss 0 for it too.
    probs4 = torch.cat([probs, torch.zeros(1, 1, 2, 2)], dim=1)
    assert dice_loss(probs4, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_matches_reference_loop_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(3, 4, 8, 8, generator=g).softmax(dim=1)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    expected = reference_dice(probs, target).item()
    assert dice_loss(probs, target).item() == pytest.approx(expected, abs=1e-6)


def test_weighted_dice_hand_computed():
    weight = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    s = 1e-5
    # class 0: no weighted target pixels; sum(w p0^2) = 0.01 + 0.5 * 0.16 = 0.09
    loss0 = 1 - s / (0.09 + s)
    # class 1: 2 * (0.9 + 0.5 * 0.6) / ((0.81 + 0.5 * 0.36) + 1.5)
    loss1 = 1 - (2.4 + s) / (0.99 + 1.5 + s)
    got = weighted_dice_loss(PROBS, TARGET, weight).item()
    assert got == pytest.approx((loss0 + loss1) / 2, abs=1e-6)


def test_weighted_dice_matches_reference_and_reduces_to_unweighted():
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(2, 3, 8, 8, generator=g).softmax(dim=1)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    weight = torch.rand(2, 8, 8, generator=g)
    expected = reference_dice(probs, target, weight).item()
    assert weighted_dice_loss(probs, target, weight).item() == pytest.approx(expected, abs=1e-6)
    ones = torch.ones(2, 8, 8)
    assert torch.allclose(weighted_dice_loss(probs, target, ones), dice_loss(probs, target))


def test_dice_losses_accept_low_precision_and_uint8_targets():
    g = torch.Generator().manual_seed(2)
    probs = torch.randn(2, 4, 8, 8, generator=g).softmax(dim=1)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    reference = dice_loss(probs, target)
    for dtype in (torch.bfloat16, torch.float16):
        low = probs.to(dtype)
        loss = dice_loss(low, target.to(torch.uint8))
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(reference.item(), abs=1e-2)
        weighted = weighted_dice_loss(low, target, torch.ones(2, 8, 8, dtype=dtype))
        assert weighted.dtype == torch.float32
        assert weighted.item() == pytest.approx(reference.item(), abs=1e-2)


def test_dice_loss_gradient_flows_to_probs():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    dice_loss(logits.softmax(dim=1), target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_dice_losses_need_no_data_on_meta_device():
    # Meta tensors hold no data: any host synchronisation (.item(), bool(tensor)) would fail.
    probs = torch.empty(2, 4, 16, 16, device="meta")
    target = torch.empty(2, 16, 16, dtype=torch.long, device="meta")
    weight = torch.empty(2, 16, 16, device="meta")
    assert dice_loss(probs, target).shape == ()
    assert weighted_dice_loss(probs, target, weight).shape == ()


def test_dice_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"target must have shape B x H x W = \(1, 2, 2\)"):
        dice_loss(PROBS, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"integer class-index tensor, got dtype torch\.float32"):
        dice_loss(PROBS, TARGET.float())
    with pytest.raises(ValueError, match=r"weight must have the target's shape \(1, 2, 2\)"):
        weighted_dice_loss(PROBS, TARGET, torch.ones(1, 2))
