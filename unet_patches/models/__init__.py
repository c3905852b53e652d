"""Network architectures behind one registry: ``MODELS[name]`` builds a network from a :class:`ModelConfig`.

Every network maps ``(N, in_channels, H, W)`` float to ``(N, num_classes, H, W)`` logits for any
``H, W`` and keeps its :class:`ModelConfig` as ``.config``, which checkpoints store.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry
from .config import UPSAMPLING_MODES, ModelConfig
from .unet import UNet

__all__ = ["MODELS", "UPSAMPLING_MODES", "ModelConfig", "UNet", "build_model", "count_parameters"]

MODELS: Registry[type[nn.Module]] = Registry("model", {"unet": UNet})


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build the network a :class:`ModelConfig` (or its dict form, as stored in checkpoints) describes.

    Raises:
        UserError: an unknown model name or setting.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return MODELS.lookup(config.name, "model.name")(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
