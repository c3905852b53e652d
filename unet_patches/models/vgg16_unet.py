"""The U-Net over a VGG-16 encoder (``MODELS["vgg16_unet"]``), after the lung X-ray write-up
(docs/ORIGINAL.md 2), which started it from ImageNet weights.

- Encoder: VGG-16's 13 convolutions in 5 stages (2, 2, 3, 3, 3) of widths ``base_width`` x 1, 2, 4,
  8, 8 (``models/vgg.py``), with VGG-16-BN's BatchNorm unless ``normalization = "none"`` (plain
  VGG-16). The max-pools between the stages make 4 poolings; VGG's fifth pool only fed its
  classifier and is left out, so the fifth stage (1/16 of the input size) is the bridge.
- Decoder: the U-Net's: 4 times upsample (``upsampling``), concatenate the output of the encoder
  stage of that size, double convolution to that stage's width.
- A 1x1 convolution gives the logits.

``model.depth`` is not read (always 4 poolings). Heights and widths must be multiples of 16.
Pretrained weights come only from the local file ``model.encoder_weights`` names
(:func:`load_encoder_weights`), loaded by ``models.build_model``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .blocks import require_divisible
from .config import ModelConfig, check_fixed, resolve_config
from .unet import DoubleConv, Up
from .vgg import VGG16_STAGES, load_encoder_weights, stage_widths, start_encoder, vgg16_features

__all__ = ["VGG16UNet", "load_encoder_weights"]

POOLINGS = len(VGG16_STAGES) - 1


class VGG16UNet(nn.Module):
    """U-Net with a VGG-16(-BN) encoder: input ``(N, in_channels, H, W)`` with ``H`` and ``W``
    multiples of 16, output ``(N, num_classes, H, W)`` logits. ``dropout`` > 0 adds 2-D dropout at
    the bridge."""

    model_name: ClassVar[str] = "vgg16_unet"
    fixed: ClassVar[dict[str, tuple[Any, str]]] = {
        "depth": (POOLINGS, "VGG-16's 5 stages of convolutions with 4 poolings between them"),
        "downsampling": ("maxpool", "VGG-16 pools with max-pooling"),
    }
    size_multiple: ClassVar[int] = 2**POOLINGS

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = resolve_config(config, overrides, self.model_name)
        self.validate(config)
        self.config = config
        self.features = vgg16_features(config, last_pool=False)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        widths = stage_widths(config.base_width)
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], config.upsampling, self.make_block)
            for i in reversed(range(POOLINGS))
        )
        self.outc = nn.Conv2d(widths[0], config.num_classes, 1)

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        """``UserError`` if ``config`` sets what this model cannot build (see ``fixed``)."""
        check_fixed(config, cls.fixed)

    def make_block(self, in_channels: int, out_channels: int, dropout: float) -> nn.Module:
        """The decoder's block: the U-Net's double convolution."""
        config = self.config
        return DoubleConv(
            in_channels, out_channels, dropout, normalization=config.normalization, activation=config.activation
        )

    def load_pretrained(self) -> None:
        """Load ``config.encoder_weights`` into the encoder (see :func:`load_encoder_weights`)."""
        start_encoder(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_divisible(x, POOLINGS, self.model_name)
        skips = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                skips.append(x)
            x = layer(x)
        x = self.dropout(x)
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
