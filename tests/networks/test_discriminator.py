from __future__ import annotations

import pytest
import torch
from torch import nn

from advmim_lightning.networks import Discriminator


@pytest.mark.parametrize(
    ("size", "grid"), [((224, 224), (7, 7)), ((32, 64), (1, 2)), ((64, 64), (2, 2))]
)
def test_output_is_a_patch_grid(size, grid) -> None:
    disc = Discriminator(num_classes=3, base_channels=4)
    probs = torch.softmax(torch.randn(2, 3, *size), dim=1)
    assert disc(probs).shape == (2, 1, *grid)


def test_default_layout_matches_the_public_code() -> None:
    disc = Discriminator()
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert shapes == {
        "conv1.weight": (64, 4, 4, 4),
        "conv1.bias": (64,),
        "conv2.weight": (128, 64, 4, 4),
        "conv2.bias": (128,),
        "conv3.weight": (256, 128, 4, 4),
        "conv3.bias": (256,),
        "conv4.weight": (512, 256, 4, 4),
        "conv4.bias": (512,),
        "classifier.weight": (1, 512, 4, 4),
        "classifier.bias": (1,),
    }
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in disc.modules())
    assert disc.act.negative_slope == 0.2
    assert Discriminator(**disc.config).config == {"num_classes": 4, "base_channels": 64}


def test_size_and_channel_errors() -> None:
    disc = Discriminator(num_classes=2, base_channels=4)
    with pytest.raises(ValueError, match=r"at least 32 x 32 pixels .* got \(16, 64\)"):
        disc(torch.rand(1, 2, 16, 64))
    with pytest.raises(ValueError, match="expected B x 2 x H x W"):
        disc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="base_channels must be an int >= 1, got 0"):
        Discriminator(base_channels=0)
