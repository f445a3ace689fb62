from __future__ import annotations

import json

import pytest
import torch

from advmim_lightning.networks import SwinUNet, downsample_mask, random_block_mask


@pytest.mark.parametrize("num_classes", [2, 5])
def test_output_shapes_four_stages(swin_kwargs, num_classes) -> None:
    net = SwinUNet(**{**swin_kwargs, "num_classes": num_classes})
    x = torch.rand(2, 1, 64, 64)
    assert net(x).shape == (2, num_classes, 64, 64)
    logits, masked = net(x, mask=random_block_mask(2, 64, block_size=16))
    assert logits.shape == masked.shape == (2, num_classes, 64, 64)


@pytest.mark.parametrize("img_size", [32, (32, 64), (64, 32)])
def test_output_shapes_two_stages_rectangular(swin2_kwargs, img_size) -> None:
    net = SwinUNet(**{**swin2_kwargs, "img_size": img_size})
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.rand(1, 1, h, w)
    assert net(x).shape == (1, 2, h, w)
    _, masked = net(x, mask=random_block_mask(1, (h, w), block_size=16))
    assert masked.shape == (1, 2, h, w)


def test_three_channel_input_is_used_as_is_and_two_channels_get_their_own_embedding(
    swin2_kwargs,
) -> None:
    rgb = SwinUNet(**{**swin2_kwargs, "in_channels": 3})
    assert rgb.patch_embed.proj.in_channels == 3 and not rgb.repeat_to_rgb
    assert rgb(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    two = SwinUNet(**{**swin2_kwargs, "in_channels": 2})
    assert two.patch_embed.proj.in_channels == 2
    assert two(torch.rand(1, 2, 32, 32)).shape == (1, 2, 32, 32)


def test_grey_input_is_repeated_to_three_channels(swin2_kwargs) -> None:
    grey = SwinUNet(**swin2_kwargs).eval()
    rgb = SwinUNet(**{**swin2_kwargs, "in_channels": 3}).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("mask_token", ["position", "shared"])
def test_apply_mask_replaces_masked_tokens_only(swin_kwargs, mask_token) -> None:
    net = SwinUNet(**swin_kwargs, mask_token=mask_token)
    x = torch.rand(2, 1, 64, 64)
    mask = random_block_mask(2, 64, block_size=16, ratio=0.5)
    tokens = net.embed(x)
    assert tokens.shape == (2, 16, 16, 12)
    masked = net.apply_mask(tokens, mask)
    token_mask = downsample_mask(mask, 4)
    assert torch.equal(masked[~token_mask], tokens[~token_mask])
    expected = net.mask_token.detach()
    if mask_token == "position":
        assert net.mask_token.shape == (1, 256, 12)
        expected = expected.view(1, 16, 16, 12).expand(2, -1, -1, -1)[token_mask]
    else:
        assert net.mask_token.shape == (1, 1, 12)
        expected = expected.view(1, 12).expand(int(token_mask.sum()), 12)
    assert torch.equal(masked[token_mask], expected)


def test_masked_stream_differs_and_original_stream_is_untouched(swin_kwargs) -> None:
    net = SwinUNet(**swin_kwargs).eval()
    x = torch.rand(2, 1, 64, 64)
    mask = random_block_mask(2, 64, block_size=16)
    with torch.no_grad():
        logits, masked = net(x, mask=mask)
        plain = net(x)
        unmasked_logits, unmasked = net(x, mask=torch.zeros(2, 64, 64, dtype=torch.bool))
    assert torch.equal(logits, plain)
    assert not torch.allclose(logits, masked)
    assert torch.equal(unmasked, unmasked_logits)


def test_mask_token_gets_gradient_only_from_the_masked_stream(swin_kwargs) -> None:
    net = SwinUNet(**swin_kwargs)
    logits, masked = net(torch.rand(2, 1, 64, 64), mask=random_block_mask(2, 64, block_size=16))
    logits.sum().backward(retain_graph=True)
    assert net.mask_token.grad is None
    masked.sum().backward()
    assert net.mask_token.grad.abs().sum() > 0


def test_batched_streams_and_fused_attention_match_the_default(swin2_kwargs) -> None:
    net = SwinUNet(**swin2_kwargs).eval()
    other = SwinUNet(**swin2_kwargs, batched_streams=True, fused_attention=True).eval()
    other.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 32, 32)
    mask = random_block_mask(2, 32, block_size=16)
    with torch.no_grad():
        for a, b in zip(net(x, mask=mask), other(x, mask=mask), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_config_rebuilds_the_network(swin_kwargs) -> None:
    net = SwinUNet(**{**swin_kwargs, "img_size": (64, 128)}, mask_token="shared")
    config = net.config
    json.dumps(config)
    assert config["img_size"] == [64, 128]
    assert config["depths"] == [1, 1, 1, 1] and config["mask_token"] == "shared"
    assert "pretrained" not in config
    rebuilt = type(net)(**config)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.config == config
    assert (net.num_classes, net.in_channels) == (3, 1)
    assert SwinUNet(**swin_kwargs).config["img_size"] == 64


def test_weight_init_pytorch_keeps_pytorchs_layer_init_and_is_in_the_config(swin_kwargs) -> None:
    public = SwinUNet(**swin_kwargs)
    torch_init = SwinUNet(**swin_kwargs, weight_init="pytorch")
    # fc1 of the first block: 12 -> 48; PyTorch draws U(-1/sqrt(12), 1/sqrt(12)), std 0.167
    public_fc1 = public.layers[0].blocks[0].mlp.fc1
    torch_fc1 = torch_init.layers[0].blocks[0].mlp.fc1
    assert float(public_fc1.weight.std()) == pytest.approx(0.02, rel=0.2)
    assert float(torch_fc1.weight.std()) == pytest.approx(12**-0.5 / 3**0.5, rel=0.2)
    assert not torch.all(torch_fc1.bias == 0) and torch.all(public_fc1.bias == 0)
    assert public.config["weight_init"] == "trunc_normal"
    assert type(torch_init)(**torch_init.config).config == torch_init.config
    with pytest.raises(ValueError, match=r"weight_init must be one of .* got 'xavier'"):
        SwinUNet(**swin_kwargs, weight_init="xavier")


def test_size_rule_224_ok_256_rejected() -> None:
    # The check runs before any layer is built, so this costs nothing.
    with pytest.raises(ValueError) as info:
        SwinUNet(img_size=256)
    message = str(info.value)
    assert "(256, 256)" in message
    assert "64x64, 32x32, 16x16, 8x8" in message
    assert "multiples of patch_size * window_size * 2**(stages - 1) = 224" in message
    with pytest.raises(ValueError, match=r"\(224, 240\)"):
        SwinUNet(img_size=(224, 240))


def test_wrong_input_size_is_rejected(swin_kwargs) -> None:
    net = SwinUNet(**swin_kwargs)
    with pytest.raises(ValueError, match=r"expected input B x 1 x 64 x 64 .* got \(1, 1, 32, 32\)"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected shape"):
        net(torch.rand(1, 1, 64, 64), mask=torch.zeros(1, 16, 16, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_heads": (3, 6, 12)}, "one positive int per stage"),
        ({"embed_dim": 10, "num_heads": (3, 6, 12, 24)}, "stage 0 has 10 channels"),
        ({"depths": (2,), "num_heads": (3,)}, "depths must list >= 2 positive ints"),
        ({"mask_token": "random"}, "mask_token must be one of"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be in [0, 1)"),
        ({"img_size": (224, 224, 3)}, "img_size must be a positive int or (H, W)"),
        ({"window_size": 0}, "window_size must be an int >= 1"),
    ],
)
def test_invalid_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        SwinUNet(**kwargs)
    assert message in str(info.value)
