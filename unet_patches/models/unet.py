"""The multiclass U-Net (``MODELS["unet"]``) and the parts it is built from.

The network returns logits; softmax belongs to the loss and to inference.
Any input size works: the decoder resizes the upsampled map to the size of the
skip connection, so sizes that are not multiples of ``2 ** depth`` are fine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pool, then a double convolution."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout))


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, double convolution."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.upsample: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            upsampled = in_channels // 2
        else:
            self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            upsampled = in_channels
        self.conv = DoubleConv(upsampled + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Odd sizes lose a row or column to pooling; stretch back to the skip's size.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net for multiclass segmentation.

    Input ``(N, in_channels, H, W)`` float, output ``(N, num_classes, H, W)`` logits.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**overrides)
        elif overrides:
            config = ModelConfig(**{**config.to_dict(), **overrides})
        self.config = config
        widths = config.widths
        self.inc = DoubleConv(config.in_channels, widths[0])
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], config.dropout if i == config.depth - 1 else 0.0)
            for i in range(config.depth)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], config.upsampling) for i in reversed(range(config.depth))
        )
        self.outc = nn.Conv2d(widths[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        smallest = 2**self.config.depth
        if height < smallest or width < smallest:
            # Pooling needs at least 2 ** depth pixels per side; pad tiny inputs, crop back.
            x = F.pad(x, (0, max(smallest - width, 0), 0, max(smallest - height, 0)), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)[..., :height, :width]
