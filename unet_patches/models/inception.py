"""The U-Net of Inception blocks (``MODELS["inception_unet"]``), after the lung-CT write-up
(docs/ORIGINAL.md 2): the U-Net with the double convolution of every level replaced by one
Inception-style block, BatchNorm and LeakyReLU throughout.

It keeps the U-Net's skeleton and so its size rule: any input size works.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from unet_patches.errors import UserError

from .blocks import conv_norm_act
from .config import ModelConfig
from .unet import UNet

__all__ = ["InceptionBlock", "InceptionUNet", "branch_widths"]


def branch_widths(out_channels: int) -> tuple[int, int, int, int]:
    """``out_channels`` split over the four branches as evenly as possible (the first ones get
    the remainder)."""
    if out_channels < 4:
        raise ValueError(f"an Inception block needs at least 4 output channels, got {out_channels}")
    share, extra = divmod(out_channels, 4)
    return tuple(share + (1 if i < extra else 0) for i in range(4))  # type: ignore[return-value]


class InceptionBlock(nn.Module):
    """Four parallel branches, concatenated to ``out_channels``:

    - 1x1 convolution;
    - 1x1 reduction, then 3x3;
    - 1x1 reduction, then two 3x3 (a 5x5 receptive field, factorised);
    - 3x3 max-pool with stride 1, then 1x1.

    Every convolution is followed by normalization and activation; ``dropout`` > 0 adds 2-D dropout
    after the concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        *,
        normalization: str = "batch",
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        w1, w3, w5, wp = branch_widths(out_channels)
        options = {"normalization": normalization, "activation": activation}
        self.branches = nn.ModuleList(
            [
                nn.Sequential(*conv_norm_act(in_channels, w1, 1, **options)),
                nn.Sequential(*conv_norm_act(in_channels, w3, 1, **options), *conv_norm_act(w3, w3, 3, **options)),
                nn.Sequential(
                    *conv_norm_act(in_channels, w5, 1, **options),
                    *conv_norm_act(w5, w5, 3, **options),
                    *conv_norm_act(w5, w5, 3, **options),
                ),
                nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_norm_act(in_channels, wp, 1, **options)),
            ]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([branch(x) for branch in self.branches], dim=1))


class InceptionUNet(UNet):
    """U-Net whose levels are :class:`InceptionBlock` s with BatchNorm (``normalization``) and
    LeakyReLU (always: ``model.activation`` is not read).

    Input ``(N, in_channels, H, W)`` float of any size, output ``(N, num_classes, H, W)`` logits.
    ``base_width`` must be at least 4 (one channel per branch).
    """

    model_name: ClassVar[str] = "inception_unet"
    fixed: ClassVar[dict[str, tuple[Any, str]]] = {
        "activation": ("leaky_relu", "its blocks always use LeakyReLU, as in the lung-CT write-up"),
        "encoder_weights": (None, "only vgg16_unet and segnet have a VGG-16 encoder"),
    }

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        super().validate(config)
        if config.base_width < 4:
            raise UserError(
                f"model.base_width = {config.base_width}: inception_unet needs at least 4 "
                "(one channel per branch of a block)"
            )

    def layer_options(self) -> dict[str, str]:
        return {"normalization": self.config.normalization, "activation": "leaky_relu"}

    def make_block(self, in_channels: int, out_channels: int, dropout: float) -> nn.Module:
        return InceptionBlock(in_channels, out_channels, dropout, **self.layer_options())
