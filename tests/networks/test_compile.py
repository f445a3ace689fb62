"""The networks trace into one graph each (no graph breaks) with ``fullgraph=True``.

``backend="eager"`` only runs Dynamo's tracing, which is what finds graph breaks, and skips code
generation, so this stays cheap on a CPU. The masked call runs both streams (original and masked)
through every layer; the plain call (inference) is the same code minus the masking, so it is traced
only for the U-Net to keep the Swin test short (Dynamo needs about a second per Swin block here).
"""

from __future__ import annotations

import torch

from advmim_lightning.networks import Discriminator, SwinUNet, UNet, random_block_mask


def _compile(net: torch.nn.Module) -> torch.nn.Module:
    torch._dynamo.reset()
    return torch.compile(net, fullgraph=True, backend="eager")


def test_unet_compiles_without_graph_breaks(unet_kwargs) -> None:
    net = UNet(**unet_kwargs).eval()
    compiled = _compile(net)
    x = torch.rand(2, 1, 32, 32)
    mask = random_block_mask(2, 32, block_size=16)
    with torch.no_grad():
        logits, masked = compiled(x, mask=mask)
        plain = compiled(x)
        expected_logits, expected_masked = net(x, mask=mask)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(masked, expected_masked)
    torch.testing.assert_close(plain, expected_logits)


def test_swin_unet_compiles_without_graph_breaks(swin2_kwargs) -> None:
    # depths (2, 1): stage 0 has a shifted-window block (roll + attention mask), as does its
    # mirrored decoder stage.
    net = SwinUNet(**{**swin2_kwargs, "depths": (2, 1)}).eval()
    compiled = _compile(net)
    x = torch.rand(2, 1, 32, 32)
    mask = random_block_mask(2, 32, block_size=16)
    with torch.no_grad():
        logits, masked = compiled(x, mask=mask)
        expected_logits, expected_masked = net(x, mask=mask)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(masked, expected_masked)


def test_discriminator_compiles_without_graph_breaks() -> None:
    compiled = _compile(Discriminator(num_classes=2, base_channels=4))
    assert compiled(torch.rand(1, 2, 32, 32)).shape == (1, 1, 1, 1)
