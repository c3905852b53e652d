"""SegNet (``MODELS["segnet"]``), the skin-lesion write-up's alternative to the U-Net
(docs/ORIGINAL.md 2): a VGG-16 encoder whose max-pooling indices drive the decoder's unpooling.

- Encoder: VGG-16's 13 convolutions in 5 stages (2, 2, 3, 3, 3) of widths ``base_width`` x 1, 2, 4,
  8, 8, each stage ended by a 2x2 max-pool that keeps its indices (``models/vgg.py``).
- Decoder, the mirror image: per stage, ``MaxUnpool2d`` with that stage's indices puts each value back
  where its maximum was (zeros elsewhere), then as many 3x3 convolutions as the encoder stage had, the
  last one narrowing to the next stage's width.
- A 1x1 convolution gives the logits.

Five poolings, always: ``model.depth`` is not read. Heights and widths must be multiples of 32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .blocks import conv_norm_act, require_divisible
from .config import ModelConfig, check_fixed, resolve_config
from .vgg import VGG16_STAGES, stage_widths, start_encoder, vgg16_features

__all__ = ["SegNet"]


class SegNet(nn.Module):
    """SegNet: input ``(N, in_channels, H, W)`` with ``H`` and ``W`` multiples of 32, output
    ``(N, num_classes, H, W)`` logits. ``dropout`` > 0 adds 2-D dropout between encoder and decoder."""

    model_name: ClassVar[str] = "segnet"
    fixed: ClassVar[dict[str, tuple[Any, str]]] = {
        "depth": (5, "VGG-16's layout: always 5 poolings"),
        "upsampling": (None, "it upsamples by unpooling with the encoder's max-pooling indices"),
        "downsampling": ("maxpool", "its unpooling needs the indices of max-pooling"),
    }
    size_multiple: ClassVar[int] = 2 ** len(VGG16_STAGES)
    # Its max-unpooling makes predictions depend on where a window starts against the 32-pixel grid;
    # overlapping training-patch windows average that out, larger windows scored lower (BENCHMARKS.md,
    # window auto), so window ``auto`` keeps the training patch for it.
    large_windows: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = resolve_config(config, overrides, self.model_name)
        self.validate(config)
        self.config = config
        self.features = vgg16_features(config, last_pool=True, return_indices=True)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.unpool = nn.MaxUnpool2d(2)
        widths = stage_widths(config.base_width)
        options = {"normalization": config.normalization, "activation": config.activation}
        stages = []
        for stage in reversed(range(len(VGG16_STAGES))):
            width, out = widths[stage], widths[max(stage - 1, 0)]
            layers = [layer for _ in range(VGG16_STAGES[stage] - 1) for layer in conv_norm_act(width, width, **options)]
            stages.append(nn.Sequential(*layers, *conv_norm_act(width, out, **options)))
        self.decoder = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(widths[0], config.num_classes, 1)

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        """``UserError`` if ``config`` sets what this model cannot build (see ``fixed``)."""
        check_fixed(config, cls.fixed)

    def load_pretrained(self) -> None:
        """Load ``config.encoder_weights`` into the encoder (see ``vgg.load_encoder_weights``)."""
        start_encoder(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_divisible(x, len(VGG16_STAGES), self.model_name)
        pooled = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pooled.append((indices, size))
            else:
                x = layer(x)
        x = self.dropout(x)
        for stage in self.decoder:
            indices, size = pooled.pop()
            x = stage(self.unpool(x, indices, output_size=size))
        return self.classifier(x)
