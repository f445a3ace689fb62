"""The optimisers of ``AdvMIMModule``: one SGD per trained part, and per-optimiser clipping.

Each optimiser's parameter group carries its gradient-norm clip (``clip_norm``, 0 = none);
:func:`clip_gradients` applies it right before the update, in the eager step
(``AdvMIMModule.on_before_optimizer_step``) and in the captured one
(:mod:`advmim_lightning.method.cuda_graph`) alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: ``torch.optim.SGD`` implementation flags per ``optimizer_impl``. ``"auto"`` is ``foreach``
#: on every device (torch's own default loops per parameter on a CPU); its updates are the
#: per-parameter loop's bit for bit.
SGD_IMPLEMENTATIONS: dict[str, dict[str, bool | None]] = {
    "auto": {"foreach": True, "fused": None},
    "for_loop": {"foreach": False, "fused": None},
    "foreach": {"foreach": True, "fused": None},
    "fused": {"foreach": None, "fused": True},
}


def build_optimizers(
    parts: Sequence[nn.Module],
    names: Sequence[str],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    clip_norm: float,
    impl: str,
) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
    """One SGD per part (its trainable parameters), each with a named constant scheduler.

    The scheduler never changes the rate (factor 1): its name (``lr-<name>``) is what
    Lightning's ``LearningRateMonitor`` logs (``lr-cnn``, ..., not ``lr-SGD-3``).

    Args:
        parts: The trained networks.
        names: Their names, same order.
        lr: The initial learning rate (the module sets it every iteration).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        clip_norm: Gradient-norm clip of every part (``0``: none).
        impl: A key of :data:`SGD_IMPLEMENTATIONS`.

    Returns:
        The optimisers, in ``parts`` order, and their Lightning scheduler configs.
    """
    flags = SGD_IMPLEMENTATIONS[impl]
    clips = [clip_norm] * len(parts)
    optimizers = [
        torch.optim.SGD(
            [{"params": [q for q in part.parameters() if q.requires_grad], "clip_norm": clip}],
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            **flags,
        )
        for part, clip in zip(parts, clips, strict=True)
    ]
    schedulers = [
        {
            "scheduler": torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
            "name": f"lr-{name}",
            "interval": "step",
        }
        for opt, name in zip(optimizers, names, strict=True)
    ]
    return optimizers, schedulers


def clip_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Clip the gradient norm of ``optimizer``'s parameters to its ``clip_norm`` (0: no-op).

    Gradients are never loss-scaled (``16-mixed`` is refused), so the norm is clipped
    directly; Lightning's own ``clip_gradients`` refuses fused optimisers under mixed
    precision. The arithmetic is ``torch.nn.utils.clip_grad_norm_``'s, bit for bit, in a
    handful of ``foreach`` kernels on every device (torch's own loops per parameter on a CPU).
    """
    clip = optimizer.param_groups[0].get("clip_norm", 0.0)
    if not clip:
        return
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if not grads:
        return
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), 2.0)
    scale = torch.clamp(clip / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale)


def update_groups(optimizers: Sequence[torch.optim.Optimizer], **values: Any) -> None:
    """Set ``values`` (``lr``, ``clip_norm``, implementation flags) in every parameter group."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.update(values)
