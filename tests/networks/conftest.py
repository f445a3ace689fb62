"""Tiny network configurations shared by the network tests (built in milliseconds on a CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

# Swin-UNet, 4 stages: img 64, patch 4 -> token grids 16, 8, 4, 2, all multiples of window 2.
TINY_SWIN: dict[str, Any] = {
    "num_classes": 3,
    "img_size": 64,
    "embed_dim": 12,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 2, 2, 4),
    "window_size": 2,
    "drop_path_rate": 0.0,
}
# Swin-UNet, 2 stages at 32 x 32: token grids 8, 4 with window 4 (shifted windows active).
TINY_SWIN_2: dict[str, Any] = {
    "num_classes": 2,
    "img_size": 32,
    "embed_dim": 8,
    "depths": (2, 2),
    "num_heads": (1, 2),
    "window_size": 4,
    "drop_path_rate": 0.0,
}
TINY_UNET: dict[str, Any] = {"channels": (4, 8, 8, 8, 8)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def swin_kwargs() -> dict[str, Any]:
    """Keyword arguments of a 4-stage tiny SwinUNet (64 x 64 input, 3 classes)."""
    return dict(TINY_SWIN)


@pytest.fixture
def swin2_kwargs() -> dict[str, Any]:
    """Keyword arguments of a 2-stage tiny SwinUNet (32 x 32 input, 2 classes)."""
    return dict(TINY_SWIN_2)


@pytest.fixture
def unet_kwargs() -> dict[str, Any]:
    """Keyword arguments of a tiny UNet (sizes must be multiples of 16)."""
    return dict(TINY_UNET)
