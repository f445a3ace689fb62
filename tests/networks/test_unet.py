from __future__ import annotations

import json

import pytest
import torch

from advmim_lightning.networks import UNet, random_block_mask


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
def test_output_shapes(unet_kwargs, size, num_classes, upsampling) -> None:
    net = UNet(num_classes=num_classes, upsampling=upsampling, **unet_kwargs)
    x = torch.rand(2, 1, *size)
    assert net(x).shape == (2, num_classes, *size)
    logits, masked = net(x, mask=random_block_mask(2, size, block_size=16))
    assert logits.shape == masked.shape == (2, num_classes, *size)


def test_three_level_unet_and_multichannel_input() -> None:
    net = UNet(in_channels=3, num_classes=5, channels=(4, 8, 16), dropout=(0.0, 0.1, 0.2))
    assert net.size_multiple == 4
    assert net(torch.rand(1, 3, 12, 20)).shape == (1, 5, 12, 20)


def test_masked_stream_differs_and_original_stream_is_untouched(unet_kwargs) -> None:
    net = UNet(**unet_kwargs).eval()
    x = torch.rand(2, 1, 32, 32)
    mask = random_block_mask(2, 32, block_size=16, ratio=0.5)
    with torch.no_grad():
        logits, masked = net(x, mask=mask)
        plain = net(x)
    assert torch.equal(logits, plain)
    assert not torch.allclose(logits, masked)


def test_apply_mask_replaces_masked_positions_only(unet_kwargs) -> None:
    net = UNet(**unet_kwargs)
    features = torch.randn(2, 4, 32, 32)
    mask = random_block_mask(2, 32, block_size=16, ratio=0.5)
    out = net.apply_mask(features, mask)
    keep = ~mask.unsqueeze(1).expand_as(features)
    assert torch.equal(out[keep], features[keep])
    token = net.mask_token.detach().view(1, 4, 1, 1).expand(2, 4, 32, 32)
    assert torch.equal(out[~keep], token[~keep])


def test_masked_first_block_features_feed_the_last_skip(unet_kwargs) -> None:
    net = UNet(**unet_kwargs).eval()
    x = torch.rand(1, 1, 32, 32)
    mask = random_block_mask(1, 32, block_size=16, ratio=0.5)
    skips: list[torch.Tensor] = []
    net.up_blocks[-1].register_forward_pre_hook(lambda _m, args: skips.append(args[1]))
    with torch.no_grad():
        net(x, mask=mask)
        first = net.in_block(x)
    assert len(skips) == 2  # original stream, then masked stream
    assert torch.equal(skips[0], first)
    assert torch.equal(skips[1], net.apply_mask(first, mask))


def test_empty_mask_reproduces_the_original_stream(unet_kwargs) -> None:
    net = UNet(**unet_kwargs).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits, masked = net(x, mask=torch.zeros(2, 32, 32, dtype=torch.bool))
    assert torch.equal(logits, masked)


def test_mask_token_gets_gradient_only_from_the_masked_stream(unet_kwargs) -> None:
    net = UNet(**unet_kwargs)
    x = torch.rand(2, 1, 32, 32)
    logits, masked = net(x, mask=random_block_mask(2, 32, block_size=16))
    logits.sum().backward(retain_graph=True)
    assert net.mask_token.grad is None
    masked.sum().backward()
    assert net.mask_token.grad is not None and net.mask_token.grad.abs().sum() > 0


def test_batched_streams_match_in_eval_and_in_training(unet_kwargs) -> None:
    sequential = UNet(**unet_kwargs)
    batched = UNet(**unet_kwargs, batched_streams=True)
    batched.load_state_dict(sequential.state_dict())
    x = torch.rand(2, 1, 32, 32)
    mask = random_block_mask(2, 32, block_size=16)
    sequential.eval()
    batched.eval()
    with torch.no_grad():
        for a, b in zip(sequential(x, mask=mask), batched(x, mask=mask), strict=True):
            torch.testing.assert_close(a, b)
    # training mode, dropout off: batch norm keeps each stream's statistics, as two calls do
    sequential = UNet(**unet_kwargs, dropout=(0.0,) * 5).train()
    batched = UNet(**unet_kwargs, dropout=(0.0,) * 5, batched_streams=True).train()
    batched.load_state_dict(sequential.state_dict())
    with torch.no_grad():
        for a, b in zip(sequential(x, mask=mask), batched(x, mask=mask), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(sequential.named_buffers(), batched.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_default_up_step_is_the_published_one(unet_kwargs) -> None:
    """SSL4MIS UpBlock(bilinear=True): conv1x1, Upsample(x2, bilinear, align_corners=True),
    cat([skip, up]), ConvBlock; written out here with plain torch calls."""
    net = UNet(**unet_kwargs).eval()
    assert net.upsampling == "bilinear"
    block = net.up_blocks[0]
    x, skip = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 6, 10)
    with torch.no_grad():
        up = torch.nn.functional.conv2d(x, block.proj.weight, block.proj.bias)
        up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(up)
        merged = torch.cat([skip, up], dim=1)
        conv = block.conv
        y = conv.act1(conv.norm1(conv.conv1(merged)))
        expected = conv.act2(conv.norm2(conv.conv2(y)))
        torch.testing.assert_close(block(x, skip), expected, rtol=0, atol=0)
    assert block.proj.kernel_size == (1, 1) and block.conv.drop.p == 0.0


def test_config_rebuilds_the_network(unet_kwargs) -> None:
    net = UNet(num_classes=3, upsampling="bilinear", **unet_kwargs)
    config = net.config
    json.dumps(config)
    assert config == {
        "in_channels": 1,
        "num_classes": 3,
        "channels": [4, 8, 8, 8, 8],
        "dropout": [0.05, 0.1, 0.2, 0.3, 0.5],
        "upsampling": "bilinear",
        "batched_streams": False,
    }
    rebuilt = type(net)(**config)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.config == config
    assert (net.num_classes, net.in_channels) == (3, 1)


def test_size_rule_is_checked_with_a_clear_message(unet_kwargs) -> None:
    net = UNet(**unet_kwargs)
    with pytest.raises(ValueError, match=r"\(40, 32\) must be a positive multiple of 16"):
        net(torch.rand(1, 1, 40, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        net.check_input_size(48, 8)
    net.check_input_size(48, 16)


@pytest.mark.parametrize(
    ("bad_input", "bad_mask", "error", "message"),
    [
        ((1, 2, 32, 32), None, ValueError, "expected input B x 1 x H x W"),
        ((1, 1, 32, 32), ((1, 16, 16), torch.bool), ValueError, "expected shape (1, 32, 32)"),
        ((1, 1, 32, 32), ((1, 32, 32), torch.float32), TypeError, "dtype torch.bool"),
    ],
)
def test_bad_inputs(unet_kwargs, bad_input, bad_mask, error, message) -> None:
    net = UNet(**unet_kwargs)
    mask = None if bad_mask is None else torch.zeros(bad_mask[0], dtype=bad_mask[1])
    with pytest.raises(error) as info:
        net(torch.rand(bad_input), mask=mask)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": (16,), "dropout": (0.1,)}, "at least 2 levels"),
        ({"dropout": (0.1, 0.2)}, "one value per level"),
        ({"dropout": (0.1, 0.2, 0.3, 0.4, 1.0)}, "in [0, 1)"),
        ({"upsampling": "nearest"}, "upsampling must be one of"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
    ],
)
def test_invalid_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        UNet(**kwargs)
    assert message in str(info.value)
