"""Network architectures behind one registry: ``MODELS[name]`` builds a network from a :class:`ModelConfig`.

Every network maps ``(N, in_channels, H, W)`` float to ``(N, num_classes, H, W)`` logits and keeps
its :class:`ModelConfig` as ``.config``, which checkpoints store. ``unet`` and ``inception_unet``
take any ``H, W``; ``segnet`` needs multiples of 32 and ``vgg16_unet`` multiples of 16
(:func:`input_size_multiple`), else their forward raises ``ValueError``. docs/MODELS.md describes
each model, its settings and its cost.

Each model class has ``model_name``, ``size_multiple``, ``fixed`` (the settings it does not read)
and a ``validate(config)`` classmethod; ``segnet`` and ``vgg16_unet`` also ``load_pretrained()``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unet_patches.registry import Registry

from .config import ACTIVATIONS, DOWNSAMPLING_MODES, NORMALIZATIONS, UPSAMPLING_MODES, ModelConfig
from .cost import count_parameters, describe, model_cost
from .inception import InceptionUNet
from .segnet import SegNet
from .unet import UNet
from .vgg16_unet import VGG16UNet, load_encoder_weights

__all__ = [
    "ACTIVATIONS",
    "DOWNSAMPLING_MODES",
    "MODELS",
    "NORMALIZATIONS",
    "UPSAMPLING_MODES",
    "InceptionUNet",
    "ModelConfig",
    "SegNet",
    "UNet",
    "VGG16UNet",
    "build_model",
    "check_config",
    "count_parameters",
    "describe",
    "input_size_multiple",
    "large_windows",
    "window_multiple",
    "load_encoder_weights",
    "model_cost",
]

MODELS: Registry[type[nn.Module]] = Registry(
    "model", {"unet": UNet, "inception_unet": InceptionUNet, "segnet": SegNet, "vgg16_unet": VGG16UNet}
)


def _as_config(config: ModelConfig | dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(config) if isinstance(config, dict) else config


def check_config(config: ModelConfig | dict[str, Any]) -> ModelConfig:
    """``config`` (or its dict form) as a :class:`ModelConfig`, checked as building it would check it,
    without building: a known name, and only settings that the model reads changed from their defaults.

    Raises:
        UserError: an unknown model name or setting, or a setting the model does not read.
    """
    config = _as_config(config)
    MODELS.lookup(config.name, "model.name").validate(config)
    return config


def input_size_multiple(config: ModelConfig | dict[str, Any]) -> int:
    """What the input height and width must be multiples of (1: any size). Tiled inference feeds
    windows of the patch size, so the patch size must be a multiple of it."""
    config = _as_config(config)
    return MODELS.lookup(config.name, "model.name").size_multiple


def window_multiple(config: ModelConfig | dict[str, Any]) -> int:
    """What inference windows (and exported sizes) are made multiples of: ``2 ** depth``, the size the
    poolings divide exactly, and at least what the model itself needs (:func:`input_size_multiple`)."""
    config = _as_config(config)
    return max(input_size_multiple(config), 2**config.depth)


def large_windows(config: ModelConfig | dict[str, Any]) -> bool:
    """Whether windows larger than the training patch predict as well as it (window ``auto``): true
    unless the model class says otherwise (``segnet``)."""
    config = _as_config(config)
    return bool(getattr(MODELS.lookup(config.name, "model.name"), "large_windows", True))


def build_model(config: ModelConfig | dict[str, Any], *, pretrained: bool = True) -> nn.Module:
    """Build the network a :class:`ModelConfig` (or its dict form, as stored in checkpoints) describes.

    ``pretrained``: load ``config.encoder_weights`` into the encoder of a model that has one (else
    say once that it starts from random weights). Pass ``False`` where the weights come from a
    checkpoint anyway, so that rebuilding does not need the file.

    Raises:
        UserError: an unknown model name or setting, a setting the model does not read, or an
            ``encoder_weights`` file that is missing or does not fit.
    """
    config = check_config(config)
    model = MODELS[config.name](config)
    if pretrained and hasattr(model, "load_pretrained"):
        model.load_pretrained()
    return model
