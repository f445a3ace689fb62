"""Pixel-wise cross-entropy terms: the supervised CE and the confidence-weighted CE (term 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["confidence_weighted_cross_entropy", "cross_entropy_loss"]


def cross_entropy_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel-wise cross-entropy, deterministic on CUDA.

    ``F.cross_entropy(logits, target)`` up to rounding (no class weights, no ignored index),
    computed unreduced and then averaged:
    CUDA's reduced 2D ``nll_loss`` adds with atomics, so ``torch.use_deterministic_algorithms``
    (Lightning's ``Trainer(deterministic=True)``) refuses it, while the unreduced kernel and
    ``mean`` are deterministic.

    Args:
        logits: raw scores, shape B x C x H x W (any floating dtype; computed in float32).
        target: integer class indices, shape B x H x W.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: if shapes do not match.
        TypeError: if ``target`` is not an integer tensor.
    """
    _check_inputs("cross_entropy_loss", logits, target)
    return F.cross_entropy(logits.to(torch.float32), target.long(), reduction="none").mean()


def _check_inputs(name: str, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
    where = f"losses/cross_entropy.py {name}"
    if logits.ndim < 3:
        raise ValueError(f"{where}: logits must be B x C x H x W, got shape {tuple(logits.shape)}.")
    expected = (logits.shape[0], *logits.shape[2:])
    shapes = {"target": target} if weight is None else {"target": target, "weight": weight}
    wrong = {k: tuple(v.shape) for k, v in shapes.items() if tuple(v.shape) != expected}
    if wrong:
        found = " and ".join(f"{k} {v}" for k, v in wrong.items())
        raise ValueError(
            f"{where}: {' and '.join(shapes)} must have shape {expected} to match logits "
            f"{tuple(logits.shape)}, got {found}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"{where}: target must be an integer class-index tensor, got dtype {target.dtype}."
        )


def confidence_weighted_cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor, eps: float = 1e-8
) -> Tensor:
    """Cross-entropy weighted per pixel and normalised by the total weight.

    ``sum(w * CE_pixel) / max(sum(w), eps)``, where ``CE_pixel`` is the unreduced cross-entropy of
    ``logits`` against ``target`` and ``w`` is typically the other network's (detached) max
    softmax. If every weight is zero the loss is 0 (no host synchronisation: the denominator is
    clamped, not tested).

    Args:
        logits: raw scores, shape B x C x H x W (any floating dtype; computed in float32).
        target: integer class indices (pseudo-labels), shape B x H x W.
        weight: non-negative per-pixel weights, shape B x H x W. Used as given (detach it
            yourself if it comes from a network).
        eps: lower bound of the denominator.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: if shapes do not match.
        TypeError: if ``target`` is not an integer tensor.
    """
    _check_inputs("confidence_weighted_cross_entropy", logits, target, weight)
    ce = F.cross_entropy(logits.to(torch.float32), target.long(), reduction="none")
    w = weight.to(torch.float32)
    return (w * ce).sum() / w.sum().clamp_min(eps)
