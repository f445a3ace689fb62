"""The Transformer of AdvMIM: Swin-UNet on timm's Swin blocks, with a masked-domain stream.

Architecture (Cao et al., Swin-Unet, as used by SSL4MIS and AdvMIM; "tiny lite" defaults):

- patch embedding (4 x 4 convolution + LayerNorm) to a token map B x H/4 x W/4 x 96;
- encoder: ``len(depths)`` stages of timm's ``SwinTransformerStage``
  (windowed attention with alternating shifted windows, no absolute position embedding); stage
  ``i > 0`` starts with timm's 2x2 patch merging, so token maps are B x H_i x W_i x C_i with
  channels-last layout throughout, ``C_i = embed_dim * 2**i``;
- bottleneck LayerNorm, then a patch-expanding decoder (its blocks written with einops in
  :mod:`~advmim_lightning.networks.swin_blocks`): each decoder stage ``k`` concatenates the skip
  of encoder stage ``n-1-k`` (the tokens entering that stage's blocks, as in the public code),
  fuses with a linear layer, runs Swin blocks of the mirrored configuration and expands x2; a
  final x4 expansion (``patch_size`` in general), LayerNorm and a 1x1 convolution give the
  logits at input resolution.

Parameter and module names mirror the published ``SwinTransformerSys`` (``layers``,
``layers_up``, ``concat_back_dim``, ``norm``, ``norm_up``) with timm's encoder layout (patch
merging at the start of stage ``i``, not the end of stage ``i-1``); ``final_expand`` and ``head``
are the public ``up`` and ``output``. :mod:`advmim_lightning.networks.pretrained` maps ImageNet
Swin weights and :mod:`advmim_lightning.networks.public_checkpoints` the published checkpoints onto
these names.

Input channels: a 1-channel image is repeated to 3 channels before the patch embedding (as the
public code does), so the patch embedding keeps the 3-channel shape of the ImageNet Swin-T weights
and of the public checkpoints and loads them unchanged. A 3-channel input is used as is; other
channel counts get a patch embedding with that many input channels (its ImageNet weights are then
skipped as a shape mismatch).

Masked domain (AdvMIM): after patch embedding and its LayerNorm, tokens whose 4 x 4 patch holds any
masked pixel are replaced by a learnable mask token, either position-specific (``1 x L x C``, one
per token position, as the public code) or one shared token (``1 x 1 x C``); the masked stream runs
the whole encoder and decoder with its own skips.

The file is longer than about 400 lines because it is one network: the :class:`SwinUNet` class
(whose docstring documents its 15 arguments and their checks) and those argument checks; the
patch expansion and decoder stage it is built from are in
:mod:`advmim_lightning.networks.swin_blocks`, and the ImageNet weights it can start from load in
:mod:`advmim_lightning.networks.pretrained`, which does not import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import torch
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformerStage, WindowAttention
from torch import Tensor, nn

from advmim_lightning.networks.masking import check_mask, downsample_mask
from advmim_lightning.networks.pretrained import load_pretrained_swin
from advmim_lightning.networks.streams import check_streams, join
from advmim_lightning.networks.swin_blocks import DecoderStage, PatchExpand

__all__ = ["SwinUNet"]

_MASK_TOKENS = ("position", "shared")
_WEIGHT_INITS = ("trunc_normal", "pytorch")


class SwinUNet(nn.Module):
    """Swin-UNet segmenter with an optional masked-domain stream (AdvMIM).

    Args:
        num_classes: output classes (background included).
        img_size: input size, an int or (H, W); fixed because the shifted-window attention masks
            and the position-specific mask token depend on it. Every stage's token grid must be a
            multiple of ``window_size``: H and W multiples of
            ``patch_size * window_size * 2 ** (len(depths) - 1)`` (224 with the defaults).
        in_channels: image channels; 1 is repeated to 3 (see the module docstring).
        patch_size: patch side of the patch embedding (and of the final expansion).
        embed_dim: channels of the first stage; stage ``i`` has ``embed_dim * 2**i``.
        depths: Swin blocks per encoder stage (the decoder mirrors them); at least 2 stages.
        num_heads: attention heads per stage; each stage's channels must be divisible by them.
        window_size: attention window side.
        mlp_ratio: MLP hidden size / token channels.
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks from 0; decoder
            stages reuse the rates of the encoder stage they mirror (as the public code).
        mask_token: ``"position"`` (one learnable token per token position, public code) or
            ``"shared"`` (one learnable token).
        pretrained: ImageNet Swin weights to start from, loaded with
            :func:`~advmim_lightning.networks.load_pretrained_swin`: a local checkpoint file
            (official Microsoft or timm format), or a Hugging Face Hub model name such as
            ``"timm/swin_tiny_patch4_window7_224.ms_in1k"`` (what the ACDC and NIfTI configs
            give), read from the Hugging Face cache and downloaded into it once where the machine
            is online (never with ``HF_HUB_OFFLINE=1``). None (default): random initialisation.
        batched_streams: with a mask, run both streams of ``net(x, mask=m)`` as one batch
            (:meth:`forward_streams`). The Swin-UNet has no batch statistics, so results equal
            the sequential default up to floating-point rounding and the order in which
            drop-path draws its random numbers. (AdvMIM's training calls
            :meth:`forward_streams` itself, see the method setting ``stream_batching``.)
        fused_attention: use ``scaled_dot_product_attention`` in the window attention (faster on
            GPUs, same result up to rounding); off by default, the explicit softmax of the public
            code.
        weight_init: ``"trunc_normal"`` (default, the public code's: linear weights drawn with
            std 0.02, zero biases, unit LayerNorms; there the ImageNet weights then replace most
            of them) or ``"pytorch"`` (PyTorch's own layer initialisation: linear weights with
            std ``1 / sqrt(3 * fan_in)``, up to 6 times larger at small widths). Trained from
            scratch with SGD on small foreground structures, the ``"trunc_normal"`` network
            stays on the all-background prediction for hundreds of iterations; ``"pytorch"``
            leaves it within the first hundred (the quickstart uses it, see
            ``configs/quickstart.yaml``). Weights loaded from ``pretrained`` replace either.

    Raises:
        ValueError: invalid argument values or sizes (the message says what is allowed).
        FileNotFoundError: ``pretrained`` names a file that does not exist, or a hub model that
            is neither cached nor downloadable (the message says what to do).

    Attributes:
        weights_source: where the weights came from (the report's source, set by
            :func:`~advmim_lightning.networks.load_pretrained_swin` and
            :func:`~advmim_lightning.networks.load_public_checkpoint`); None while the network
            holds its random initialisation.
    """

    def __init__(
        self,
        num_classes: int = 4,
        img_size: int | Sequence[int] = 224,
        in_channels: int = 1,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        mask_token: Literal["position", "shared"] = "position",
        pretrained: str | PathLike[str] | None = None,
        batched_streams: bool = False,
        fused_attention: bool = False,
        weight_init: Literal["trunc_normal", "pytorch"] = "trunc_normal",
    ) -> None:
        super().__init__()
        height, width = _check_img_size(img_size)
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("patch_size", patch_size),
            ("embed_dim", embed_dim),
            ("window_size", window_size),
        ):
            _check_positive_int(value, name)
        depths = tuple(depths)
        num_heads = tuple(num_heads)
        if len(depths) < 2 or not all(_is_positive_int(d) for d in depths):
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: depths must list >= 2 positive ints (blocks per "
                f"stage), got {depths!r}."
            )
        if len(num_heads) != len(depths) or not all(_is_positive_int(h) for h in num_heads):
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: num_heads needs one positive int per stage "
                f"(len(depths) = {len(depths)}), got {num_heads!r}."
            )
        dims = [embed_dim * 2**i for i in range(len(depths))]
        for stage, (dim, heads) in enumerate(zip(dims, num_heads, strict=True)):
            if dim % heads:
                raise ValueError(
                    f"networks/swin_unet.py SwinUNet: stage {stage} has {dim} channels "
                    f"(embed_dim * 2**{stage}), not divisible by num_heads[{stage}] = {heads}."
                )
        if not float(mlp_ratio) > 0:
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: mlp_ratio must be > 0, got {mlp_ratio!r}."
            )
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: drop_path_rate must be in [0, 1), "
                f"got {drop_path_rate!r}."
            )
        if mask_token not in _MASK_TOKENS:
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: mask_token must be one of {_MASK_TOKENS}, "
                f"got {mask_token!r}."
            )
        if weight_init not in _WEIGHT_INITS:
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: weight_init must be one of {_WEIGHT_INITS}, "
                f"got {weight_init!r}."
            )
        num_stages = len(depths)
        multiple = patch_size * window_size * 2 ** (num_stages - 1)
        if height % multiple or width % multiple:
            grid = (height / patch_size, width / patch_size)
            stage_grids = [(grid[0] / 2**i, grid[1] / 2**i) for i in range(num_stages)]
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: img_size (H, W) = ({height}, {width}) does not "
                f"fit patch_size={patch_size}, window_size={window_size} and {num_stages} stages: "
                f"the stage token grids would be {_format_grids(stage_grids)}, and each must be a "
                f"whole multiple of window_size. H and W must be multiples of patch_size * "
                f"window_size * 2**(stages - 1) = {multiple} (e.g. 224 works with the defaults, "
                f"256 does not)."
            )

        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.img_size = (height, width)
        self._img_size_arg: int | list[int] = (
            img_size if isinstance(img_size, int) else [height, width]
        )
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.drop_path_rate = float(drop_path_rate)
        self.mask_token_type = mask_token
        self.batched_streams = bool(batched_streams)
        self.fused_attention = bool(fused_attention)
        self.weight_init = weight_init
        self.repeat_to_rgb = in_channels == 1
        self.grid_size = (height // patch_size, width // patch_size)
        stage_grids = [(self.grid_size[0] >> i, self.grid_size[1] >> i) for i in range(num_stages)]

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(num_stages)]

        self.patch_embed = PatchEmbed(
            img_size=(height, width),
            patch_size=patch_size,
            in_chans=3 if self.repeat_to_rgb else in_channels,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
        )
        self.layers = nn.ModuleList(
            SwinTransformerStage(
                dim=dims[max(i - 1, 0)],
                out_dim=dims[i],
                input_resolution=stage_grids[max(i - 1, 0)],
                depth=depths[i],
                downsample=i > 0,
                num_heads=num_heads[i],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                drop_path=stage_rates[i],
            )
            for i in range(num_stages)
        )
        self.norm = nn.LayerNorm(dims[-1])

        # layers_up[0] only expands the bottleneck; layers_up[k] (k >= 1) mirrors encoder stage
        # n-1-k. concat_back_dim[0] is an identity so both lists share the public code's indices.
        self.layers_up = nn.ModuleList([PatchExpand(dims[-1], 2, dims[-1] // 2)])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for k in range(1, num_stages):
            s = num_stages - 1 - k
            self.concat_back_dim.append(nn.Linear(2 * dims[s], dims[s]))
            self.layers_up.append(
                DecoderStage(
                    dim=dims[s],
                    resolution=stage_grids[s],
                    depth=depths[s],
                    num_heads=num_heads[s],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=stage_rates[s],
                    upsample=k < num_stages - 1,
                )
            )
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final_expand = PatchExpand(embed_dim, patch_size, embed_dim)
        self.head = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)

        if weight_init == "trunc_normal":
            self.apply(_init_weights)
        num_tokens = self.grid_size[0] * self.grid_size[1] if mask_token == "position" else 1
        self.mask_token = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.fused_attn = self.fused_attention

        self.weights_source: str | None = None
        if pretrained is not None:
            load_pretrained_swin(self, pretrained)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-friendly constructor arguments: ``SwinUNet(**net.config)`` rebuilds the network.

        ``pretrained`` is left out (None): the weights it loaded live in the state dict, and a
        rebuild elsewhere must not depend on the file.
        """
        return {
            "num_classes": self.num_classes,
            "img_size": self._img_size_arg,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window_size,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
            "mask_token": self.mask_token_type,
            "batched_streams": self.batched_streams,
            "fused_attention": self.fused_attention,
            "weight_init": self.weight_init,
        }

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding with its LayerNorm: the point where masking happens.

        Args:
            x: images B x C_in x H x W with (H, W) = ``img_size``.

        Returns:
            Token map B x H/patch x W/patch x embed_dim (channels last).

        Raises:
            ValueError: wrong channel count or size.
        """
        self.check_input(x)
        if self.repeat_to_rgb:
            x = x.expand(-1, 3, -1, -1)
        return self.patch_embed(x)

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``B x in_channels x img_size``."""
        expected = (self.in_channels, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"networks/swin_unet.py SwinUNet: expected input B x {expected[0]} x "
                f"{expected[1]} x {expected[2]} (in_channels x img_size), got {tuple(x.shape)}; "
                f"resize the images to img_size or build the network with another img_size."
            )

    def apply_mask(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Replace masked tokens by the mask token.

        Args:
            tokens: B x H/patch x W/patch x embed_dim from :meth:`embed`.
            mask: B x H x W bool at input resolution, True = masked; a token is masked when any
                pixel of its patch is.

        Returns:
            Tokens of the same shape; unmasked tokens are returned unchanged (bit for bit).
        """
        token_mask = downsample_mask(mask, self.patch_size).unsqueeze(-1)
        if self.mask_token_type == "position":
            token = self.mask_token.view(1, *self.grid_size, self.embed_dim)
        else:
            token = self.mask_token.view(1, 1, 1, self.embed_dim)
        return torch.where(token_mask, token.to(tokens.dtype), tokens)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Segment ``x``; with a mask, also segment its masked version in the same call.

        Args:
            x: images B x C_in x H x W, (H, W) = ``img_size``.
            mask: optional B x H x W bool mask at input resolution, True = masked.

        Returns:
            Logits B x num_classes x H x W without a mask; with a mask the tuple
            ``(logits, masked_logits)``, both B x num_classes x H x W.

        Raises:
            ValueError: wrong input or mask shape.
            TypeError: mask not bool.
        """
        if mask is not None and self.batched_streams:
            return self.forward_streams([x], [mask])
        tokens = self.embed(x)
        if mask is None:
            return self._segment(tokens)
        check_mask(mask, x, "networks/swin_unet.py SwinUNet")
        masked_tokens = self.apply_mask(tokens, mask)  # first: the backward's summation order
        return self._segment(tokens), self._segment(masked_tokens)

    def forward_streams(
        self, images: Sequence[Tensor], masks: Sequence[Tensor] | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The calls ``self(x, mask=m)`` for each image batch and its mask, as one pass.

        The Swin-UNet has no batch statistics, so one pass over all batches and both domains
        equals the separate calls up to float rounding (and drop-path's draws).

        Args:
            images: ``B_i x C_in x H x W`` image batches.
            masks: One ``B_i x H x W`` bool mask per batch, or None (no masked stream).

        Returns:
            The logits of all batches joined in order (``sum(B_i) x num_classes x H x W``);
            with masks the pair ``(logits, masked_logits)``.
        """
        check_streams(images, masks, self.check_input, "networks/swin_unet.py SwinUNet")
        tokens = self.embed(join(images))
        if masks is None:
            return self._segment(tokens)
        masked = self.apply_mask(tokens, join(masks))
        logits, masked_logits = self._segment(torch.cat([tokens, masked])).chunk(2)
        return logits, masked_logits

    def _segment(self, tokens: Tensor) -> Tensor:
        """Encoder, bottleneck and decoder: B x h x w x embed_dim tokens -> B x K x H x W logits."""
        skips = []
        x = tokens
        for stage in self.layers:
            x = stage.downsample(x)
            skips.append(x)  # the tokens entering the stage's blocks, as the public code
            x = stage.blocks(x)
        x = self.norm(x)
        x = self.layers_up[0](x)
        for fuse, stage, skip in zip(
            self.concat_back_dim[1:], self.layers_up[1:], reversed(skips[:-1]), strict=True
        ):
            x = stage(fuse(torch.cat([x, skip], dim=-1)))
        x = self.final_expand(self.norm_up(x))
        return self.head(x.permute(0, 3, 1, 2))


def _init_weights(module: nn.Module) -> None:
    """The public code's initialisation: truncated normal (std 0.02) linear weights, zero biases,
    unit LayerNorms. Convolutions keep PyTorch's default, relative position tables timm's."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_positive_int(value: Any, name: str) -> None:
    if not _is_positive_int(value):
        raise ValueError(
            f"networks/swin_unet.py SwinUNet: {name} must be an int >= 1, got {value!r}."
        )


def _check_img_size(img_size: Any) -> tuple[int, int]:
    if _is_positive_int(img_size):
        return img_size, img_size
    if (
        isinstance(img_size, Sequence)
        and not isinstance(img_size, str)
        and len(img_size) == 2
        and all(_is_positive_int(v) for v in img_size)
    ):
        return int(img_size[0]), int(img_size[1])
    raise ValueError(
        f"networks/swin_unet.py SwinUNet: img_size must be a positive int or (H, W), "
        f"got {img_size!r}."
    )


def _format_grids(grids: Sequence[tuple[float, float]]) -> str:
    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    return ", ".join(f"{fmt(h)}x{fmt(w)}" for h, w in grids)
