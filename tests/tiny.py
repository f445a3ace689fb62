"""Tiny networks and batches so module tests run in milliseconds (tests/ is on sys.path)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from advmim_lightning.networks import SwinUNet, UNet

TINY_SIZE = 64
TINY_CLASSES = 4


def tiny_unet(num_classes: int = TINY_CLASSES, in_channels: int = 1) -> UNet:
    """A UNet with 4-8 channels: the real architecture at a toy width."""
    return UNet(in_channels=in_channels, num_classes=num_classes, channels=(4, 8, 8, 8, 8))


def tiny_swin(
    num_classes: int = TINY_CLASSES, img_size: int = TINY_SIZE, in_channels: int = 1
) -> SwinUNet:
    """A Swin-UNet with one block per stage, 12-dim embedding and 2x2 windows."""
    return SwinUNet(
        num_classes=num_classes,
        img_size=img_size,
        in_channels=in_channels,
        embed_dim=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=2,
        drop_path_rate=0.0,
    )


def tiny_batch(
    n_labeled: int = 2, n_unlabeled: int = 2, size: int = TINY_SIZE, seed: int = 0
) -> dict:
    """A paired training batch of random images with blob labels."""
    gen = torch.Generator().manual_seed(seed)
    x_l = torch.rand(n_labeled, 1, size, size, generator=gen)
    label = (x_l[:, 0] * TINY_CLASSES).long().clamp_max(TINY_CLASSES - 1)
    return {
        "labeled": {
            "image": x_l,
            "label": label,
            "case_id": [f"case{i}" for i in range(n_labeled)],
        },
        "unlabeled": {
            "image": torch.rand(n_unlabeled, 1, size, size, generator=gen),
            "case_id": [f"u{i}" for i in range(n_unlabeled)],
        },
    }


def full_state(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Copies of a module's state dict and of every SGD momentum buffer its trainer holds."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for i, opt in enumerate(module.trainer.optimizers):
        for j, param in enumerate(opt.param_groups[0]["params"]):
            if "momentum_buffer" in opt.state[param]:
                state[f"opt{i}.momentum{j}"] = opt.state[param]["momentum_buffer"].clone()
    return state


class StateSnapshots(pl.Callback):
    """Records :func:`full_state` as ``before<i>`` / ``after<i>`` around training batch ``i``."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.states[f"before{batch_idx}"] = full_state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states[f"after{batch_idx}"] = full_state(pl_module)


def assert_same_training_state(got: dict, expected: dict) -> None:
    """Weights, buffers and all SGD momenta of two checkpoints are bitwise equal."""
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    for a, b in zip(expected["optimizer_states"], got["optimizer_states"], strict=True):
        assert a["state"].keys() == b["state"].keys()
        for index, state in a["state"].items():
            assert torch.equal(state["momentum_buffer"], b["state"][index]["momentum_buffer"])
