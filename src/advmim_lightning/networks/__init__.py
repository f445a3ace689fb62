"""Networks of AdvMIM as plain ``nn.Module``s (no Lightning here).

- :class:`UNet`: the CNN segmenter (SSL4MIS U-Net) with a masked-domain stream.
- :class:`SwinUNet`: the Transformer segmenter (Swin-UNet "tiny lite" on timm's Swin blocks) with a
  masked-domain stream.
- :class:`Discriminator`: the LSGAN patch discriminator on softmax maps.
- :func:`random_block_mask`: the block masks the caller draws and passes as ``net(x, mask=m)``.
- :func:`load_pretrained_swin`: ImageNet Swin weights from a local file or the Hugging Face cache
  (``SwinUNet(pretrained=...)``); :func:`load_public_checkpoint`: the published code's models.

Both segmenters share one calling convention: ``net(x)`` returns logits B x K x H x W;
``net(x, mask=m)`` with a B x H x W bool mask (True = masked) returns ``(logits, masked_logits)``.
"""

from __future__ import annotations

from advmim_lightning.networks.discriminator import Discriminator
from advmim_lightning.networks.masking import downsample_mask, num_masked_blocks, random_block_mask
from advmim_lightning.networks.pretrained import (
    IMAGENET_SWIN_T,
    PretrainedReport,
    load_pretrained_swin,
    random_init_warning,
)
from advmim_lightning.networks.public_checkpoints import load_public_checkpoint, public_key_to_local
from advmim_lightning.networks.swin_unet import SwinUNet
from advmim_lightning.networks.unet import UNet

__all__ = [
    "IMAGENET_SWIN_T",
    "Discriminator",
    "PretrainedReport",
    "SwinUNet",
    "UNet",
    "downsample_mask",
    "load_pretrained_swin",
    "load_public_checkpoint",
    "num_masked_blocks",
    "public_key_to_local",
    "random_block_mask",
    "random_init_warning",
]
