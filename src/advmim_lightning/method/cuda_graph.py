"""The whole training iteration as one CUDA graph (``AdvMIMModule(cuda_graph=True)``).

:class:`GraphedIteration` is the second runner of the model's iteration
(:meth:`~advmim_lightning.method.model.AdvMIMModel.iteration_losses`), beside the
LightningModule's eager step: it is given that call and the optimisers, nothing else.

An AdvMIM iteration launches thousands of small kernels: two segmenters forward and backward
on two streams each, every loss term, two discriminator passes, the clipping and four SGD
updates. At 8 + 8 images a GPU finishes many of them faster than Python can launch them, so
the iteration is bound by launch overhead. :class:`GraphedIteration` records the iteration
once and then replays it with one launch per iteration:

- **Static inputs.** The batch is copied into fixed device buffers (labeled images, labels,
  unlabeled images), and so are the masked-domain masks, which the module still draws on the
  device from its own generator before every replay, in the order the eager step draws them.
- **Scalars that change** (the poly learning rate, the cross-teaching weight) live in 0-d
  device tensors refilled before every replay, so one capture serves the whole run. Loss
  weights that never change are constants of the graph.
- **Randomness.** Dropout and drop path draw from PyTorch's default generator, which the module
  re-seeds per iteration; a replay reads the generator's seed and offset at launch, so it
  draws what the eager step would draw.
- **The optimiser update** is :func:`sgd_update`: PyTorch's SGD (momentum, weight decay,
  no dampening or Nesterov) written with foreach kernels and a device learning rate, keeping
  its momentum buffers in the optimisers' own state, so checkpoints are the same as without the
  graph. Gradients are clipped per optimiser first, as the eager step does.

The first :data:`WARMUP_ITERATIONS` iterations of a fit run the same step function eagerly on
a side stream (they train, nothing is thrown away): they create the momentum buffers, let
cuDNN choose its algorithms and compile networks where ``compile_networks`` asks for it. The
next iteration captures the step and replays it. Without capture (``capture=False``) every
iteration runs the step function eagerly on the static buffers, which is how the CPU tests
check it against the module's eager ``training_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from advmim_lightning.method.model import IterationLosses
from advmim_lightning.method.optim import clip_gradients

#: The iteration's loss call: ``(x_l, y, x_u, masks, ct_weight) -> IterationLosses``.
LossCall = Callable[[Tensor, Tensor, "Tensor | None", Sequence[Tensor], Tensor], IterationLosses]

__all__ = ["WARMUP_ITERATIONS", "GraphedIteration", "sgd_update"]

#: Eager iterations on the side stream before the capture (PyTorch's examples use 3).
WARMUP_ITERATIONS = 3


@torch.no_grad()
def sgd_update(optimizer: torch.optim.Optimizer, lr: Tensor) -> None:
    """One step of ``optimizer`` (a :class:`torch.optim.SGD`) with a 0-d device ``lr``.

    The arithmetic of PyTorch's SGD without dampening or Nesterov: ``d = g + wd * p``; the
    momentum buffer is ``d`` on the first step, ``momentum * buf + d`` after; ``p -= lr * buf``.
    Parameters without a gradient are left alone, as SGD leaves them. Nothing reads the device
    back, so the update can be captured in a CUDA graph once the momentum buffers exist.

    Raises:
        ValueError: If a parameter group asks for what this update does not do (dampening,
            Nesterov, maximize).
    """
    for group in optimizer.param_groups:
        if group.get("dampening", 0) or group.get("nesterov") or group.get("maximize"):
            raise ValueError(
                "cuda_graph updates with plain SGD (momentum, weight decay); this optimiser "
                f"has dampening={group.get('dampening')}, nesterov={group.get('nesterov')}, "
                f"maximize={group.get('maximize')}"
            )
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            steps = []
            running_bufs, running_grads = [], []
            for param, grad in zip(params, grads, strict=True):
                state = optimizer.state[param]
                buf = state.get("momentum_buffer")
                if buf is None:  # first step: the buffer starts as the gradient
                    buf = torch.clone(grad).detach()
                    state["momentum_buffer"] = buf
                else:
                    running_bufs.append(buf)
                    running_grads.append(grad)
                steps.append(buf)
            if running_bufs:
                torch._foreach_mul_(running_bufs, momentum)
                torch._foreach_add_(running_bufs, running_grads)
        else:
            steps = grads
        _descend(params, steps, lr)


def _descend(params: list[Tensor], steps: list[Tensor], lr: Tensor) -> None:
    """``p -= lr * step`` for every parameter, ``lr`` a 0-d device tensor."""
    torch._foreach_sub_(params, torch._foreach_mul(steps, lr))


class GraphedIteration:
    """Runs a training iteration from static buffers, captured as one CUDA graph.

    Args:
        losses: The iteration's loss call (the model's ``iteration_losses``).
        optimizers: One SGD per trained part, in the order they step (their momentum buffers
            are the run's: checkpoints save them as without the graph).
        device: Where the buffers live.
        capture: Capture and replay after the warm-up (CUDA only). False runs the step function
            eagerly every iteration.
        warmup: Eager iterations before the capture.
    """

    def __init__(
        self,
        losses: LossCall,
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        capture: bool = True,
        warmup: int = WARMUP_ITERATIONS,
    ) -> None:
        self.losses = losses
        self.device = device
        self.capture = capture
        self.warmup = warmup
        self.optimizers: list[torch.optim.Optimizer] = list(optimizers)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_iterations = 0
        self._static: dict[str, Tensor] | None = None
        self._static_masks: list[Tensor] = []
        self._outputs: tuple[dict[str, Tensor], Tensor] | None = None
        self._stream = torch.cuda.Stream(device) if capture else None

    def run(
        self,
        x_l: Tensor,
        y: Tensor,
        x_u: Tensor | None,
        masks: Sequence[Tensor],
        lr: float,
        ct_weight: float,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """One whole iteration: losses, both backward passes, clipping and every SGD update.

        Args:
            x_l, y, x_u: The labeled images, their labels and the unlabeled images (None for
                the supervised baseline), on the module's device.
            masks: The masked-domain masks, in the order the step uses them (empty without).
            lr: The iteration's learning rate; ``ct_weight`` its cross-teaching weight.

        Returns:
            The unweighted loss terms by name and the segmenters' total loss: static tensors,
            overwritten by the next iteration (clone what must outlive it).

        Raises:
            ValueError: If a batch differs in shape, dtype or layout from the first one (a
                captured graph replays fixed shapes).
        """
        inputs = {"x_l": x_l, "y": y}
        if x_u is not None:
            inputs["x_u"] = x_u
        self._fill(inputs, list(masks), lr, ct_weight)
        if self.graph is not None:
            self.graph.replay()
            assert self._outputs is not None
            return self._outputs
        if not self.capture or self.eager_iterations < self.warmup:
            self.eager_iterations += 1
            return self._eager_step()
        self._zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may allocate while this captures.
        with torch.cuda.graph(self.graph, stream=self._stream, capture_error_mode="thread_local"):
            self._outputs = self._step()
        self.graph.replay()
        return self._outputs

    def fits(self, x_l: Tensor, y: Tensor, x_u: Tensor | None, masks: Sequence[Tensor]) -> bool:
        """Whether :meth:`run` can take this batch: nothing captured or filled yet, or the
        same shapes, dtypes and strides as the first batch."""
        if self._static is None:
            return True
        inputs = {"x_l": x_l, "y": y, **({"x_u": x_u} if x_u is not None else {})}
        if inputs.keys() != self._static.keys() - {"lr", "ct_weight"}:
            return False
        if len(masks) != len(self._static_masks):
            return False
        pairs = [(v, self._static[k]) for k, v in inputs.items()]
        pairs += list(zip(masks, self._static_masks, strict=True))
        return all(_same_layout(value, static) for value, static in pairs)

    # ------------------------------------------------------------------ buffers
    def _fill(self, inputs: dict[str, Tensor], masks: list[Tensor], lr: float, ct: float) -> None:
        if self._static is None:
            device = self.device
            self._static = {k: v.detach().clone() for k, v in inputs.items()}
            self._static["lr"] = torch.tensor(lr, dtype=torch.float32, device=device)
            self._static["ct_weight"] = torch.tensor(ct, dtype=torch.float32, device=device)
            self._static_masks = [m.detach().clone() for m in masks]
            return
        for name, value in inputs.items():
            _check_same(name, value, self._static.get(name))
        if len(masks) != len(self._static_masks):
            raise ValueError(
                f"cuda_graph: this iteration draws {len(masks)} masks, the captured one "
                f"{len(self._static_masks)}"
            )
        for i, mask in enumerate(masks):
            _check_same(f"mask {i}", mask, self._static_masks[i])
        for name, value in inputs.items():
            self._static[name].copy_(value)
        for static, mask in zip(self._static_masks, masks, strict=True):
            static.copy_(mask)
        self._static["lr"].fill_(lr)
        self._static["ct_weight"].fill_(ct)

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ the step
    def _eager_step(self) -> tuple[dict[str, Tensor], Tensor]:
        self._zero_grad()
        if self._stream is None:
            return self._step()
        # Warm-up on the capture's side stream, as PyTorch asks of whole-network capture.
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            outputs = self._step()
        current.wait_stream(self._stream)
        return outputs

    def _step(self) -> tuple[dict[str, Tensor], Tensor]:
        """The step function: everything between the batch and the updated weights."""
        static = self._static
        assert static is not None
        out = self.losses(
            static["x_l"], static["y"], static.get("x_u"), self._static_masks, static["ct_weight"]
        )
        out.segmenter_total.backward()
        if out.discriminator_total is not None:
            out.discriminator_total.backward()
        for optimizer in self.optimizers:  # transformer, CNN, then the discriminators
            clip_gradients(optimizer)
            sgd_update(optimizer, static["lr"])
        return out.terms, out.segmenter_total


def _same_layout(value: Tensor, static: Tensor) -> bool:
    return (
        value.shape == static.shape
        and value.dtype == static.dtype
        and value.stride() == static.stride()
    )


def _check_same(name: str, value: Tensor, static: Tensor | None) -> None:
    if static is None:
        raise ValueError(f"cuda_graph: the batch gained {name!r}, which the first batch lacked")
    if not _same_layout(value, static):
        raise ValueError(
            f"cuda_graph replays the first batch's shapes, but {name} is "
            f"{tuple(value.shape)} {value.dtype} (strides {value.stride()}) where the first "
            f"batch had {tuple(static.shape)} {static.dtype} (strides {static.stride()}). "
            "Give every batch the same size (the data module's paired batches do; check a "
            "custom loader's last batch) or set model.cuda_graph=false."
        )
