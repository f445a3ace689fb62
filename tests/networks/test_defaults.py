"""The default networks: parameter counts (printed to the log) and the public code's shapes."""

from __future__ import annotations

import pytest
import torch

from advmim_lightning.networks import Discriminator, SwinUNet, UNet, public_key_to_local


@pytest.fixture(scope="module")
def default_swin() -> SwinUNet:
    return SwinUNet()  # about 1 s on one CPU thread


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_default_parameter_counts(default_swin) -> None:
    swin = _count(default_swin)
    swin_token = default_swin.mask_token.numel()
    unet = _count(UNet())
    unet_transposed = _count(UNet(upsampling="transposed"))
    disc = _count(Discriminator())
    print(
        f"\nSwinUNet() {swin:,} parameters ({swin - swin_token:,} without the 1x3136x96 mask "
        f"token); UNet() {unet:,} (the published bilinear decoder), "
        f"UNet(upsampling='transposed') {unet_transposed:,}; Discriminator() {disc:,}"
    )
    assert swin == 27_469_476 and swin_token == 3136 * 96
    assert unet == 1_813_780  # the published U-Net's "about 1.81 M"
    assert unet_transposed == 1_944_340
    assert disc == 2_765_761


# Shapes read off the public SSL4MIS / AdvMIM code for its default configuration (4 classes,
# 1 input channel; Swin-UNet tiny lite at 224).
PUBLIC_SWIN_SHAPES = {
    "swin_unet.patch_embed.proj.weight": (96, 3, 4, 4),
    "swin_unet.mask_token": (1, 3136, 96),
    "swin_unet.layers.0.blocks.1.attn.relative_position_bias_table": (169, 3),
    "swin_unet.layers.0.downsample.reduction.weight": (192, 384),
    "swin_unet.layers.2.downsample.norm.weight": (1536,),
    "swin_unet.layers.3.blocks.1.mlp.fc1.weight": (3072, 768),
    "swin_unet.norm.weight": (768,),
    "swin_unet.layers_up.0.expand.weight": (1536, 768),
    "swin_unet.layers_up.0.norm.weight": (384,),
    "swin_unet.concat_back_dim.1.weight": (384, 768),
    "swin_unet.layers_up.1.blocks.0.attn.qkv.weight": (1152, 384),
    "swin_unet.layers_up.1.upsample.expand.weight": (768, 384),
    "swin_unet.layers_up.3.blocks.1.norm2.bias": (96,),
    "swin_unet.norm_up.weight": (96,),
    "swin_unet.up.expand.weight": (1536, 96),
    "swin_unet.up.norm.weight": (96,),
    "swin_unet.output.weight": (4, 96, 1, 1),
}
PUBLIC_UNET_SHAPES = {
    "encoder.in_conv.conv_conv.0.weight": (16, 1, 3, 3),
    "encoder.in_conv.conv_conv.1.running_var": (16,),
    "encoder.down4.maxpool_conv.1.conv_conv.4.weight": (256, 256, 3, 3),
    "encoder.mask_token": (1, 16, 1, 1),
    "decoder.up1.conv1x1.weight": (128, 256, 1, 1),
    "decoder.up1.conv.conv_conv.0.weight": (128, 256, 3, 3),
    "decoder.up4.conv.conv_conv.5.bias": (16,),
    "decoder.out_conv.weight": (4, 16, 3, 3),
}


def test_default_swin_has_the_public_shapes(default_swin) -> None:
    state = default_swin.state_dict()
    for key, shape in PUBLIC_SWIN_SHAPES.items():
        assert tuple(state[public_key_to_local(key, default_swin)].shape) == shape, key


def test_default_unet_has_the_public_shapes() -> None:
    net = UNet()
    assert net.upsampling == "bilinear"
    state = net.state_dict()
    for key, shape in PUBLIC_UNET_SHAPES.items():
        assert tuple(state[public_key_to_local(key, net)].shape) == shape, key
    assert not any(".up." in key for key in state)
    transposed = UNet(upsampling="transposed").state_dict()
    assert tuple(transposed["up_blocks.0.up.weight"].shape) == (256, 128, 2, 2)
