"""Soft Dice losses on softmax probabilities (the SSL4MIS formula).

Both functions are vectorised over classes (one-hot encoding plus reductions), perform no host
synchronisation and compute their reductions in float32, so they are safe inside a training step
under ``bf16-mixed`` or ``16-mixed`` precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "weighted_dice_loss"]


def _check_shapes(probs: Tensor, target: Tensor, name: str) -> None:
    if probs.ndim < 3:
        raise ValueError(
            f"losses/dice.py {name}: probs must be B x C x H x W (or B x C x spatial...), "
            f"got shape {tuple(probs.shape)}."
        )
    expected = (probs.shape[0], *probs.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"losses/dice.py {name}: target must have shape B x H x W = {expected} to match probs "
            f"{tuple(probs.shape)}, got {tuple(target.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"losses/dice.py {name}: target must be an integer class-index tensor, "
            f"got dtype {target.dtype}."
        )


def _one_hot(target: Tensor, num_classes: int) -> Tensor:
    """B x H x W integer -> B x C x H x W float32 one-hot (no host sync on CUDA)."""
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).to(torch.float32)


def dice_loss(probs: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """Soft Dice loss averaged over all classes, background included (SSL4MIS ``DiceLoss``).

    For each class ``c`` with one-hot target ``t_c`` and probabilities ``p_c``, sums taken over the
    whole batch and all pixels::

        loss_c = 1 - (2 * sum(p_c * t_c) + smooth) / (sum(p_c ** 2) + sum(t_c ** 2) + smooth)

    and the result is ``mean_c loss_c``.

    Args:
        probs: softmax probabilities, shape B x C x H x W (any further spatial dims allowed).
            Any floating dtype; reductions run in float32.
        target: integer class indices in ``[0, C)``, shape B x H x W.
        smooth: additive smoothing in numerator and denominator.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: if the shapes of ``probs`` and ``target`` do not match.
        TypeError: if ``target`` is not an integer tensor.
    """
    _check_shapes(probs, target, "dice_loss")
    p = probs.to(torch.float32)
    t = _one_hot(target, p.shape[1])
    dims = (0, *range(2, p.ndim))
    intersect = (p * t).sum(dims)
    denominator = (p * p).sum(dims) + (t * t).sum(dims)
    per_class = 1.0 - (2.0 * intersect + smooth) / (denominator + smooth)
    return per_class.mean()


def weighted_dice_loss(
    probs: Tensor, target: Tensor, weight: Tensor, smooth: float = 1e-5
) -> Tensor:
    """Pixel-weighted soft Dice loss (the paper's confidence-weighted Dice on unlabeled data).

    For each class ``c``, with per-pixel weight ``w`` (e.g. the teacher's max softmax)::

        loss_c = 1 - (2 * sum(w * p_c * t_c) + smooth)
                     / (sum(w * p_c ** 2) + sum(w * t_c ** 2) + smooth)

    averaged over all classes. With ``w = 1`` this equals :func:`dice_loss`. The weight is used as
    given (detach it yourself if it comes from a network).

    Args:
        probs: softmax probabilities, shape B x C x H x W.
        target: integer class indices, shape B x H x W.
        weight: non-negative per-pixel weights, shape B x H x W.
        smooth: additive smoothing in numerator and denominator.

    Returns:
        Scalar float32 tensor.

    Raises:
        ValueError: if the shapes of ``probs``, ``target`` and ``weight`` do not match.
        TypeError: if ``target`` is not an integer tensor.
    """
    _check_shapes(probs, target, "weighted_dice_loss")
    if weight.shape != target.shape:
        raise ValueError(
            f"losses/dice.py weighted_dice_loss: weight must have the target's shape "
            f"{tuple(target.shape)}, got {tuple(weight.shape)}."
        )
    p = probs.to(torch.float32)
    t = _one_hot(target, p.shape[1])
    w = weight.to(torch.float32).unsqueeze(1)
    dims = (0, *range(2, p.ndim))
    intersect = (w * p * t).sum(dims)
    denominator = (w * p * p).sum(dims) + (w * t * t).sum(dims)
    per_class = 1.0 - (2.0 * intersect + smooth) / (denominator + smooth)
    return per_class.mean()
