"""The CNN of AdvMIM: the small SSL4MIS / PyMIC U-Net, with a masked-domain stream.

Encoder channels 16-32-64-128-256 by default; every block is conv3x3-BN-LeakyReLU-Dropout-
conv3x3-BN-LeakyReLU, encoder dropout 0.05/0.1/0.2/0.3/0.5, max-pool down, decoder blocks without
dropout, 3x3 output convolution.

Masked domain (AdvMIM): the 16-channel features after the first block are replaced by one
learnable token (1 x C0 x 1 x 1) wherever the caller's mask is True; the masked features run the
rest of the encoder and the decoder and are also the decoder's last skip input.

Up-sampling (decoder): ``"bilinear"`` (default) is the published decoder: each up step is a 1x1
convolution to the skip's channels, then bilinear x2 up-sampling with ``align_corners=True``, then
the skip is concatenated in front and a :class:`ConvBlock` follows, as SSL4MIS's ``UpBlock``, whose
``bilinear`` flag defaults to True and which the SSL4MIS and AdvMIM ``unet.py`` build without
passing it. The published checkpoints (``decoder.upK.conv1x1`` keys) therefore load into ``UNet()``
(about 1.81 M parameters). ``"transposed"`` (a 2x2 stride-2 transposed convolution, about 1.94 M
parameters) stays available as an option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmim_lightning.networks.masking import check_mask
from advmim_lightning.networks.streams import (
    StreamBatch,
    check_streams,
    deinterleave,
    interleave,
    supports_stream_statistics,
)

__all__ = ["UNet"]

_UPSAMPLING = ("bilinear", "transposed")


class ConvBlock(nn.Module):
    """conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU, spatial size preserved.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dropout: dropout probability between the two convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.LeakyReLU()
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.LeakyReLU()

    def forward(self, x: Tensor, streams: StreamBatch | None = None) -> Tensor:
        """B x in x H x W -> B x out x H x W (``streams``: per-stream batch norm)."""
        x = self.drop(self.act1(_norm(self.norm1, self.conv1(x), streams)))
        return self.act2(_norm(self.norm2, self.conv2(x), streams))


def _norm(norm: nn.BatchNorm2d, x: Tensor, streams: StreamBatch | None) -> Tensor:
    return norm(x) if streams is None else streams.batch_norm(norm, x)


class DownBlock(nn.Module):
    """2x2 max-pool then :class:`ConvBlock`: B x in x H x W -> B x out x H/2 x W/2."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = ConvBlock(in_channels, out_channels, dropout)

    def forward(self, x: Tensor, streams: StreamBatch | None = None) -> Tensor:
        """B x in x H x W -> B x out x H/2 x W/2."""
        return self.conv(self.pool(x), streams)


class UpBlock(nn.Module):
    """Up-sample by 2, concatenate the skip, then :class:`ConvBlock` (no dropout).

    Args:
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip input; the up-sampled input is projected to this
            many channels.
        out_channels: output channels.
        upsampling: ``"bilinear"`` (1x1 conv, then bilinear x2 with ``align_corners=True``) or
            ``"transposed"`` (see the module docstring).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str
    ) -> None:
        super().__init__()
        self.bilinear = upsampling == "bilinear"
        if self.bilinear:
            self.proj = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        else:
            self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout=0.0)

    def forward(self, x: Tensor, skip: Tensor, streams: StreamBatch | None = None) -> Tensor:
        """x: B x in x h x w, skip: B x skip x 2h x 2w -> B x out x 2h x 2w."""
        if self.bilinear:
            x = F.interpolate(self.proj(x), scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1), streams)


class UNet(nn.Module):
    """U-Net segmenter with an optional masked-domain stream (AdvMIM).

    Args:
        in_channels: image channels C_in.
        num_classes: output classes (background included).
        channels: channels per level, coarsest last; at least 2 levels. Input sizes must be
            divisible by ``2 ** (len(channels) - 1)`` (16 by default).
        dropout: encoder dropout per level, same length as ``channels``, each in [0, 1).
        upsampling: ``"bilinear"`` (default, the published decoder: 1x1 conv, then bilinear x2
            with ``align_corners=True``; its checkpoints load into ``UNet()``) or
            ``"transposed"`` (2x2 stride-2 transposed convolution).
        batched_streams: with a mask, run the original and masked streams of ``net(x, mask=m)``
            as one batch (:meth:`forward_streams`): batch norm keeps each stream's own
            statistics, so the result equals the default's up to rounding and dropout draws.
            Off by default, which runs the two streams one after the other as the public code
            does. (AdvMIM's training calls :meth:`forward_streams` itself, see the method
            setting ``stream_batching``.)

    Raises:
        ValueError: invalid argument values (the message names the argument and what is allowed).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        upsampling: Literal["bilinear", "transposed"] = "bilinear",
        batched_streams: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        dropout = tuple(float(p) for p in dropout)
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(num_classes, "num_classes")
        if len(channels) < 2:
            raise ValueError(
                f"networks/unet.py UNet: channels needs at least 2 levels, got {channels!r}."
            )
        for value in channels:
            _check_positive_int(value, f"every entry of channels {channels!r}")
        if len(dropout) != len(channels):
            raise ValueError(
                f"networks/unet.py UNet: dropout needs one value per level "
                f"(len(channels) = {len(channels)}), got {dropout!r}."
            )
        if not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(
                f"networks/unet.py UNet: dropout values must be in [0, 1), got {dropout!r}."
            )
        if upsampling not in _UPSAMPLING:
            raise ValueError(
                f"networks/unet.py UNet: upsampling must be one of {_UPSAMPLING}, "
                f"got {upsampling!r}."
            )

        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.channels = channels
        self.dropout = dropout
        self.upsampling = upsampling
        self.batched_streams = bool(batched_streams)
        self.size_multiple = 2 ** (len(channels) - 1)
        #: Where the weights came from (set by the checkpoint loaders); None: initialisation.
        self.weights_source: str | None = None

        self.in_block = ConvBlock(in_channels, channels[0], dropout[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(channels[i], channels[i + 1], dropout[i + 1])
            for i in range(len(channels) - 1)
        )
        self.up_blocks = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i], upsampling)
            for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=3, padding=1)
        self.mask_token = nn.Parameter(torch.zeros(1, channels[0], 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-friendly constructor arguments: ``UNet(**net.config)`` rebuilds the network."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "channels": list(self.channels),
            "dropout": list(self.dropout),
            "upsampling": self.upsampling,
            "batched_streams": self.batched_streams,
        }

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError unless (height, width) fits the encoder's down-sampling.

        Args:
            height: input height in pixels.
            width: input width in pixels.

        Raises:
            ValueError: height or width not a positive multiple of ``2 ** (levels - 1)``.
        """
        m = self.size_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"networks/unet.py UNet: input size (H, W) = ({height}, {width}) must be a "
                f"positive multiple of {m} (the encoder halves the size {len(self.channels) - 1} "
                f"times); resize or pad the images, e.g. to 224 x 224."
            )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Segment ``x``; with a mask, also segment its masked version in the same call.

        Args:
            x: images, B x C_in x H x W float, H and W multiples of ``2 ** (levels - 1)``.
            mask: optional B x H x W bool mask at input resolution, True = masked. Masked
                positions of the first block's features are replaced by the mask token.

        Returns:
            Logits B x num_classes x H x W without a mask; with a mask the tuple
            ``(logits, masked_logits)``, both B x num_classes x H x W.

        Raises:
            ValueError: wrong channel count, spatial size or mask shape.
            TypeError: mask not bool.
        """
        self._check_input(x)
        if mask is not None and self.batched_streams and supports_stream_statistics(self):
            return self.forward_streams([x], [mask])
        first = self.in_block(x)
        if mask is None:
            return self._segment(first)
        check_mask(mask, x, "networks/unet.py UNet")
        masked_first = self.apply_mask(first, mask)  # first: the backward's summation order
        return self._segment(first), self._segment(masked_first)

    def forward_streams(
        self, images: Sequence[Tensor], masks: Sequence[Tensor] | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The calls ``self(x, mask=m)`` for each image batch and its mask, as one pass.

        The original and masked streams of every batch run as one interleaved batch whose
        batch norms keep each stream's statistics and update their running statistics as the
        separate calls would, in the calls' order (:class:`~advmim_lightning.networks.streams.
        StreamBatch`). The results equal the separate calls up to float rounding (and dropout's
        draws). Batches of different sizes run as separate calls.

        Args:
            images: ``B_i x C_in x H x W`` image batches.
            masks: One ``B_i x H x W`` bool mask per batch, or None (no masked stream).

        Returns:
            The logits of all batches joined in order (``sum(B_i) x num_classes x H x W``);
            with masks the pair ``(logits, masked_logits)``.
        """
        check_streams(images, masks, self._check_input, "networks/unet.py UNet")
        if len({x.shape[0] for x in images}) != 1 or not supports_stream_statistics(self):
            return _joined_calls(self, images, masks)
        count = len(images)
        inputs = StreamBatch(count)
        first = self.in_block(interleave(images), inputs)
        if masks is None:
            segments = StreamBatch(count)
            out = self._segment(first, segments)
        else:
            masked = self.apply_mask(first, interleave(masks))
            segments = StreamBatch(2 * count)  # stream 2 i + k: batch i, original / masked
            out = self._segment(interleave([first, masked]), segments)
        inputs.update_running_stats()
        segments.update_running_stats()
        if masks is None:
            return torch.cat(deinterleave(out, count))
        streams = deinterleave(out, 2 * count)
        return torch.cat(streams[0::2]), torch.cat(streams[1::2])

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"networks/unet.py UNet: expected input B x {self.in_channels} x H x W, "
                f"got {tuple(x.shape)}."
            )
        self.check_input_size(x.shape[2], x.shape[3])

    def apply_mask(self, features: Tensor, mask: Tensor) -> Tensor:
        """Replace masked positions of the first block's features by the mask token.

        Args:
            features: B x C0 x H x W output of the first block.
            mask: B x H x W bool, True = masked.

        Returns:
            B x C0 x H x W; unmasked positions are returned unchanged (bit for bit).
        """
        return torch.where(mask.unsqueeze(1), self.mask_token.to(features.dtype), features)

    def _segment(self, first: Tensor, streams: StreamBatch | None = None) -> Tensor:
        """Run the rest of the encoder from the first block's features (B x C0 x H x W, also the
        last skip), then the decoder; returns B x num_classes x H x W logits."""
        features = [first]
        x = first
        for down in self.down_blocks:
            x = down(x, streams)
            features.append(x)
        features.pop()  # the bottleneck is the decoder input, not a skip
        for up in self.up_blocks:
            x = up(x, features.pop(), streams)
        return self.head(x)


def _joined_calls(
    net: nn.Module, images: Sequence[Tensor], masks: Sequence[Tensor] | None
) -> Tensor | tuple[Tensor, Tensor]:
    """``forward_streams``' result from separate calls (batches of different sizes)."""
    if masks is None:
        return torch.cat([net(x) for x in images])
    pairs = [net(x, mask=m) for x, m in zip(images, masks, strict=True)]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"networks/unet.py UNet: {name} must be an int >= 1, got {value!r}.")
