"""Several calls of one network as one batched call, with the calls' own batch statistics.

AdvMIM calls each segmenter on several *streams* per iteration: the labeled and the unlabeled
batch, each in the original and in the masked domain. Run one after the other, every stream
is a separate pass over the whole network (hundreds of small kernels each). Joined into one
batch they cost one pass, and for layers that treat samples independently (convolutions,
pooling, activations, attention, layer norm) the result is the same up to float rounding.
Batch norm is the exception: in training it normalises with the statistics of the batch it
is given, and separate calls give each stream its own.

:class:`StreamBatch` keeps the separate calls' semantics for batch norm. The streams are
*interleaved* along the batch, sample ``b`` of stream ``s`` at row ``b * S + s``, so that a
``(B * S) x C x H x W`` activation views as ``B x (S * C) x H x W`` without a copy. One
batch-norm kernel over that view normalises every (stream, channel) pair with its own
statistics, exactly as ``S`` separate calls would. The batch statistics it returns then update
the layer's running statistics as the ``S`` calls would have, in their order, up to rounding
(``foreach`` lerps after the pass, one per stream for all layers of the pass with the same
momentum).

Dropout and drop-path draw their random numbers once for the joined batch: the same
distribution, other draws than separate calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmim_lightning.networks.masking import check_mask

__all__ = [
    "StreamBatch",
    "check_streams",
    "deinterleave",
    "interleave",
    "join",
    "supports_stream_statistics",
]


def check_streams(
    images: Sequence[Tensor],
    masks: Sequence[Tensor] | None,
    check_input: Callable[[Tensor], None],
    where: str,
) -> None:
    """Check a ``forward_streams`` call: one mask per image batch, each batch
    (``check_input``) and its mask.

    Raises:
        ValueError: On another mask count (naming ``where``), or what the checks raise.
    """
    if masks is not None and len(masks) != len(images):
        raise ValueError(
            f"{where}: forward_streams needs one mask per image batch, got {len(masks)} masks "
            f"for {len(images)} batches."
        )
    for i, x in enumerate(images):
        check_input(x)
        if masks is not None:
            check_mask(masks[i], x, where)


def interleave(streams: Sequence[Tensor]) -> Tensor:
    """Join equally sized ``B x ...`` streams into ``(B * S) x ...``, sample ``b`` of stream
    ``s`` at row ``b * S + s``."""
    return torch.stack(list(streams), dim=1).flatten(0, 1)


def join(batches: Sequence[Tensor]) -> Tensor:
    """Batches one after the other along the batch (the one batch itself, uncopied)."""
    return batches[0] if len(batches) == 1 else torch.cat(list(batches))


def deinterleave(joined: Tensor, count: int) -> list[Tensor]:
    """The ``count`` streams of an :func:`interleave` d ``(B * S) x ...`` tensor (views)."""
    return list(joined.unflatten(0, (-1, count)).unbind(1))


def supports_stream_statistics(module: nn.Module) -> bool:
    """Whether every batch norm of ``module`` can keep per-stream statistics in one call.

    Batch norms with ``momentum=None`` (a cumulative average whose factor depends on the
    call count) and other normalisations with batch or running statistics (``BatchNorm1d`` /
    ``3d``, ``SyncBatchNorm``, instance norm tracking running statistics) are not handled:
    such networks run their streams as separate calls.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.instancenorm._InstanceNorm):
            if layer.track_running_stats:
                return False
        elif isinstance(layer, nn.modules.batchnorm._NormBase):
            if type(layer) is not nn.BatchNorm2d or layer.momentum is None:
                return False
    return True


class StreamBatch:
    """One pass of ``count`` interleaved streams; batch norm with per-stream statistics.

    Usage: build it for the pass, route every ``BatchNorm2d`` call through
    :meth:`batch_norm`, then call :meth:`update_running_stats` once after the pass.

    Args:
        count: The number of streams ``S`` (the batch is ``B * S`` rows).
        order: The order in which separate calls would have updated the running statistics,
            as stream indices (default ``0 .. S - 1``).
    """

    def __init__(self, count: int, order: Sequence[int] | None = None) -> None:
        if count < 1:
            raise ValueError(f"StreamBatch needs at least one stream, got count={count}")
        self.count = count
        self.order = list(range(count)) if order is None else list(order)
        if sorted(self.order) != list(range(count)):
            raise ValueError(f"order must be a permutation of 0..{count - 1}, got {self.order}")
        # (layer, its batch statistics: 2 x S x C, mean then unbiased variance)
        self._pending: list[tuple[nn.BatchNorm2d, Tensor]] = []

    def batch_norm(self, norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
        """``norm`` applied to each stream of ``x`` (``(B * S) x C x H x W``) separately.

        In evaluation (running statistics), or with a single stream, this is ``norm(x)``.
        """
        uses_batch_stats = norm.training or norm.running_mean is None
        if self.count == 1 or not uses_batch_stats:
            return norm(x)
        tracks = norm.running_mean is not None and norm.track_running_stats
        s, (rows, channels) = self.count, x.shape[:2]
        per_stream = x.reshape(rows // s, s * channels, *x.shape[2:])
        weight = norm.weight.repeat(s) if norm.weight is not None else None
        bias = norm.bias.repeat(s) if norm.bias is not None else None
        if not tracks:  # track_running_stats=False: batch statistics only, nothing updated
            out = F.batch_norm(per_stream, None, None, weight, bias, True, 0.0, norm.eps)
            return out.reshape(x.shape)
        # momentum 1 makes the kernel write the batch statistics themselves into the buffers
        stats = torch.zeros(2, s * channels, dtype=norm.running_mean.dtype, device=x.device)
        out = F.batch_norm(per_stream, stats[0], stats[1], weight, bias, True, 1.0, norm.eps)
        self._pending.append((norm, stats.view(2, s, channels)))
        return out.reshape(x.shape)

    @torch.no_grad()
    def update_running_stats(self) -> None:
        """Move each layer's running statistics as the separate calls would have, in order:
        ``running += momentum * (batch_stat - running)`` per stream, and
        ``num_batches_tracked += S``."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        by_momentum: dict[float, list[tuple[nn.BatchNorm2d, Tensor]]] = {}
        for norm, stats in pending:
            by_momentum.setdefault(float(norm.momentum), []).append((norm, stats))
        for momentum, entries in by_momentum.items():
            running = [b for norm, _ in entries for b in (norm.running_mean, norm.running_var)]
            for stream in self.order:
                batch = [stats[i, stream] for _, stats in entries for i in (0, 1)]
                torch._foreach_lerp_(running, batch, momentum)
        torch._foreach_add_([norm.num_batches_tracked for norm, _ in pending], self.count)
