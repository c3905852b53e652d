"""The multiclass U-Net (``MODELS["unet"]``) and the parts it is built from.

The network returns logits; softmax belongs to the loss and to inference.
Any input size works: the decoder resizes the upsampled map to the size of the
skip connection, so sizes that are not multiples of ``2 ** depth`` are fine, and
inputs smaller than ``2 ** depth`` are padded and the output cropped back.

The settings ``upsampling``, ``downsampling``, ``normalization``, ``activation``,
``dropout``, ``base_width`` and ``depth`` give the variants of the skin-lesion
write-up (docs/ORIGINAL.md 2); their defaults are the original network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SplitInput, conv_norm_act
from .config import ModelConfig, check_fixed, resolve_config

__all__ = ["BlockFactory", "DoubleConv", "Down", "UNet", "Up"]

# (in_channels, out_channels, dropout) -> the block of one level
BlockFactory = Callable[[int, int, float], nn.Module]


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice; ``normalization="none"`` drops the BatchNorm (the
    convolutions then have a bias) and ``activation`` picks the nonlinearity."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        *,
        normalization: str = "batch",
        activation: str = "relu",
    ) -> None:
        options = {"normalization": normalization, "activation": activation}
        layers = [
            *conv_norm_act(in_channels, out_channels, **options),
            *conv_norm_act(out_channels, out_channels, **options),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """Halve the size (2x2 max-pool, or a 3x3 convolution with stride 2 followed by normalization
    and activation), then the level's block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        make_block: BlockFactory,
        dropout: float = 0.0,
        *,
        downsampling: str = "maxpool",
        normalization: str = "batch",
        activation: str = "relu",
    ) -> None:
        if downsampling == "maxpool":
            pool: nn.Module = nn.MaxPool2d(2)
        elif downsampling == "strided_conv":
            pool = nn.Sequential(
                *conv_norm_act(in_channels, in_channels, stride=2, normalization=normalization, activation=activation)
            )
        else:
            raise ValueError(f"unknown downsampling {downsampling!r}")
        super().__init__(pool, make_block(in_channels, out_channels, dropout))


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, then the level's block."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, mode: str, make_block: BlockFactory
    ) -> None:
        super().__init__()
        # How upsampling stretches, and how odd sizes are stretched back to the skip's size
        # (bilinearly after a transposed convolution).
        self.resize_mode = "nearest" if mode == "nearest" else "bilinear"
        self.align_corners = None if mode == "nearest" else False
        if mode == "transpose":
            self.upsample: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            upsampled = in_channels // 2
        elif mode in ("bilinear", "nearest"):
            self.upsample = nn.Upsample(scale_factor=2, mode=mode, align_corners=self.align_corners)
            upsampled = in_channels
        else:
            raise ValueError(f"unknown upsampling {mode!r}")
        self.skip_channels = skip_channels
        self.conv = make_block(skip_channels + upsampled, out_channels, 0.0)

    def split_input(self) -> None:
        """For inference: feed the block the skip connection and the upsampled map apart instead of
        their concatenation (:class:`~.blocks.SplitInput`), where its first layer is a plain convolution."""
        if SplitInput.fits(self.conv, self.skip_channels):
            self.conv = SplitInput(self.conv, self.skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Odd sizes lose a row or column to pooling; stretch back to the skip's size.
            x = F.interpolate(x, size=skip.shape[-2:], mode=self.resize_mode, align_corners=self.align_corners)
        if isinstance(self.conv, SplitInput):
            return self.conv(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net for multiclass segmentation.

    Input ``(N, in_channels, H, W)`` float of any size, output ``(N, num_classes, H, W)`` logits.
    Subclasses change the block of each level (:meth:`make_block`) and the activation.
    """

    model_name: ClassVar[str] = "unet"
    # Settings this model does not read: (the value it has anyway, why), see config.check_fixed.
    fixed: ClassVar[dict[str, tuple[Any, str]]] = {
        "encoder_weights": (None, "only vgg16_unet and segnet have a VGG-16 encoder")
    }
    # Input heights and widths must be multiples of this (1: any size).
    size_multiple: ClassVar[int] = 1

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = resolve_config(config, overrides, self.model_name)
        self.validate(config)
        self.config = config
        widths = config.widths
        self.inc = self.make_block(config.in_channels, widths[0], 0.0)
        options = {"downsampling": config.downsampling, **self.layer_options()}
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], self.make_block, config.dropout if i == config.depth - 1 else 0.0, **options)
            for i in range(config.depth)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], config.upsampling, self.make_block)
            for i in reversed(range(config.depth))
        )
        self.outc = nn.Conv2d(widths[0], config.num_classes, 1)

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        """``UserError`` if ``config`` sets what this model cannot build (see ``fixed``)."""
        check_fixed(config, cls.fixed)

    def layer_options(self) -> dict[str, str]:
        """Normalization and activation of every layer."""
        return {"normalization": self.config.normalization, "activation": self.config.activation}

    def make_block(self, in_channels: int, out_channels: int, dropout: float) -> nn.Module:
        """The block of one level: the double convolution."""
        return DoubleConv(in_channels, out_channels, dropout, **self.layer_options())

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
