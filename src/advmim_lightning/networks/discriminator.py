"""The patch discriminator of AdvMIM (least-squares GAN on softmax maps).

Four 4x4 / stride-2 / padding-1 convolutions with LeakyReLU(0.2) and channels 64-128-256-512, then
a 4x4 / stride-2 / padding-1 convolution to one channel: a 224 x 224 map gives a 7 x 7 grid of
real/fake scores (no sigmoid, no normalisation). Parameter names (``conv1`` ... ``conv4``,
``classifier``) are those of the public code's ``CNNDiscriminator``, so its state dicts load as is.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["Discriminator"]

_MIN_SIZE = 32  # five stride-2 convolutions: below 32 pixels the output would be empty


class Discriminator(nn.Module):
    """LSGAN patch discriminator.

    Args:
        num_classes: channels of the input probability maps.
        base_channels: channels of the first convolution; doubled three times.

    Raises:
        ValueError: non-positive arguments.
    """

    def __init__(self, num_classes: int = 4, base_channels: int = 64) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("base_channels", base_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"networks/discriminator.py Discriminator: {name} must be an int >= 1, "
                    f"got {value!r}."
                )
        self.num_classes = num_classes
        self.in_channels = num_classes
        self.base_channels = base_channels
        c = base_channels
        self.conv1 = nn.Conv2d(num_classes, c, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 4 * c, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(4 * c, 8 * c, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Conv2d(8 * c, 1, kernel_size=4, stride=2, padding=1)
        self.act = nn.LeakyReLU(negative_slope=0.2)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-friendly constructor arguments: ``Discriminator(**d.config)`` rebuilds it."""
        return {"num_classes": self.num_classes, "base_channels": self.base_channels}

    def forward(self, probs: Tensor) -> Tensor:
        """Score a batch of probability maps.

        Args:
            probs: softmax maps B x num_classes x H x W, H and W >= 32.

        Returns:
            Scores B x 1 x H/32 x W/32 (floor at every stride-2 step for other sizes).

        Raises:
            ValueError: wrong channel count or a map smaller than 32 x 32.
        """
        if probs.ndim != 4 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"networks/discriminator.py Discriminator: expected B x {self.num_classes} x H x "
                f"W probability maps, got {tuple(probs.shape)}."
            )
        if probs.shape[2] < _MIN_SIZE or probs.shape[3] < _MIN_SIZE:
            raise ValueError(
                f"networks/discriminator.py Discriminator: maps must be at least {_MIN_SIZE} x "
                f"{_MIN_SIZE} pixels (five stride-2 convolutions), got "
                f"{tuple(probs.shape[2:])}."
            )
        x = self.act(self.conv1(probs))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        x = self.act(self.conv4(x))
        return self.classifier(x)
