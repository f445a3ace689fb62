"""Confidence-weighted cross-entropy for masked unlabeled images (AdvMIM loss term 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["confidence_weighted_cross_entropy"]


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
    if logits.ndim < 3:
        raise ValueError(
            f"losses/cross_entropy.py confidence_weighted_cross_entropy: logits must be "
            f"B x C x H x W, got shape {tuple(logits.shape)}."
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected or tuple(weight.shape) != expected:
        raise ValueError(
            f"losses/cross_entropy.py confidence_weighted_cross_entropy: target and weight must "
            f"have shape {expected} to match logits {tuple(logits.shape)}, got target "
            f"{tuple(target.shape)} and weight {tuple(weight.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"losses/cross_entropy.py confidence_weighted_cross_entropy: target must be an "
            f"integer class-index tensor, got dtype {target.dtype}."
        )
    ce = F.cross_entropy(logits.to(torch.float32), target.long(), reduction="none")
    w = weight.to(torch.float32)
    return (w * ce).sum() / w.sum().clamp_min(eps)
