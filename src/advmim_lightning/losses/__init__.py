"""Loss functions of AdvMIM and its baselines, as small pure functions.

- :func:`dice_loss`: soft Dice over all classes (SSL4MIS formula).
- :func:`weighted_dice_loss`: the same with per-pixel confidence weights.
- :func:`cross_entropy_loss`: mean pixel-wise CE (deterministic on CUDA).
- :func:`confidence_weighted_cross_entropy`: ``sum(w * CE) / sum(w)``.
- :func:`lsgan_loss`: least-squares GAN term.

All are free of host synchronisation and reduce in float32.
"""

from __future__ import annotations

from advmim_lightning.losses.adversarial import lsgan_loss
from advmim_lightning.losses.cross_entropy import (
    confidence_weighted_cross_entropy,
    cross_entropy_loss,
)
from advmim_lightning.losses.dice import dice_loss, weighted_dice_loss

__all__ = [
    "confidence_weighted_cross_entropy",
    "cross_entropy_loss",
    "dice_loss",
    "lsgan_loss",
    "weighted_dice_loss",
]
