"""The decoder blocks of the Swin-UNet: patch expanding and one decoder stage.

:class:`PatchExpand` enlarges a channels-last token map (Swin-Unet's patch expanding);
:class:`DecoderStage` runs timm's Swin blocks at one resolution and expands x2.
:class:`~advmim_lightning.networks.swin_unet.SwinUNet` builds its decoder from them (its encoder
stages and patch merging are timm's ``SwinTransformerStage``).
"""

from __future__ import annotations

from collections.abc import Sequence

from einops import rearrange
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor, nn

__all__ = ["DecoderStage", "PatchExpand"]


class PatchExpand(nn.Module):
    """Expand a token map by ``scale`` in each direction (Swin-Unet patch expanding).

    A bias-free linear layer maps C to ``scale**2 * out_dim`` channels, which are rearranged into a
    ``scale x scale`` neighbourhood per token (einops ``b h w (p1 p2 c) -> b (h p1) (w p2) c``,
    the channel order of the public code), then LayerNorm.

    Args:
        dim: input channels C.
        scale: expansion factor per side (2 between decoder stages, the patch size at the end).
        out_dim: output channels.
    """

    def __init__(self, dim: int, scale: int, out_dim: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """B x H x W x C -> B x scale*H x scale*W x out_dim."""
        x = rearrange(
            self.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=self.scale, p2=self.scale
        )
        return self.norm(x)


class DecoderStage(nn.Module):
    """Swin blocks at one resolution, then an optional x2 patch expansion.

    Args:
        dim: token channels.
        resolution: token grid (H, W) of this stage.
        depth: number of Swin blocks (even-indexed blocks use plain windows, odd ones shifted).
        num_heads: attention heads.
        window_size: attention window side.
        mlp_ratio: MLP hidden size / dim.
        drop_path: stochastic depth rate per block (``depth`` values).
        upsample: whether to end with a x2 expansion to ``dim // 2`` channels.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        upsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                SwinTransformerBlock(
                    dim=dim,
                    input_resolution=resolution,
                    num_heads=num_heads,
                    window_size=window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            )
        )
        self.upsample = PatchExpand(dim, 2, dim // 2) if upsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """B x H x W x C -> B x H x W x C, or B x 2H x 2W x C/2 with ``upsample``."""
        return self.upsample(self.blocks(x))
