"""Least-squares GAN loss (Mao et al., 2017), used for AdvMIM's generator and discriminators."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lsgan_loss"]


def lsgan_loss(prediction: Tensor, target_is_real: bool) -> Tensor:
    """Mean squared error of discriminator outputs to the label 1 (real) or 0 (fake).

    Generator side: ``lsgan_loss(D(fake), True)``. Discriminator side:
    ``lsgan_loss(D(real), True) + lsgan_loss(D(fake.detach()), False)``.

    Args:
        prediction: discriminator outputs of any shape, e.g. B x 1 x h x w (any floating dtype;
            computed in float32).
        target_is_real: ``True`` to pull the outputs towards 1, ``False`` towards 0.

    Returns:
        Scalar float32 tensor.

    Raises:
        TypeError: if ``target_is_real`` is not a Python bool.
    """
    if not isinstance(target_is_real, bool):
        raise TypeError(
            f"losses/adversarial.py lsgan_loss: target_is_real must be a Python bool, "
            f"got {type(target_is_real).__name__}."
        )
    target = 1.0 if target_is_real else 0.0
    return (prediction.to(torch.float32) - target).square().mean()
