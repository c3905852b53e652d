"""VGG-16's convolutional part (``features``) for the encoders of ``segnet`` and ``vgg16_unet``, and
its pretrained weights read from a local file in torchvision's state-dict layout.

The layout: 13 3x3 convolutions in 5 stages of 2, 2, 3, 3, 3, with widths ``base_width`` times 1, 2,
4, 8, 8 (VGG-16's own: 64), each stage ended by a 2x2 max-pool. ``features`` is one
``nn.Sequential`` whose indices are torchvision's: conv, ReLU, ..., pool without BatchNorm
(``vgg16``: ``features.0`` ... ``features.28`` hold weights) and conv, BatchNorm, ReLU, ..., pool with
it (``vgg16_bn``: ``features.0`` ... ``features.41``). So a torchvision file maps key for key. The
convolutions keep VGG's bias even before BatchNorm.

No weights are downloaded: ``model.encoder_weights`` names a file the user has, for example one saved
with ``torch.save(torchvision.models.vgg16_bn(weights="DEFAULT").state_dict(), "vgg16_bn.pt")``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_patches.errors import UserError

from .blocks import conv_norm_act
from .config import ModelConfig

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG16_STAGES", "load_encoder_weights", "start_encoder", "vgg16_features"]

VGG16_STAGES = (2, 2, 3, 3, 3)  # convolutions per stage
VGG16_WIDTHS = (1, 2, 4, 8, 8)  # stage widths in units of base_width
# The input normalization torchvision's pretrained VGG-16 weights expect (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_log = logging.getLogger(__name__)
_said_random = False


def stage_widths(base_width: int) -> tuple[int, ...]:
    return tuple(base_width * factor for factor in VGG16_WIDTHS)


def vgg16_features(config: ModelConfig, *, last_pool: bool, return_indices: bool = False) -> nn.Sequential:
    """The 13 convolutions (with ``config``'s normalization and activation) and the pools after
    each stage; ``last_pool=False`` leaves out the fifth (it holds no weights, so the indices of the
    rest stay torchvision's)."""
    layers: list[nn.Module] = []
    channels = config.in_channels
    options = {"normalization": config.normalization, "activation": config.activation, "bias": True}
    for stage, (convs, width) in enumerate(zip(VGG16_STAGES, stage_widths(config.base_width))):
        for _ in range(convs):
            layers += conv_norm_act(channels, width, **options)
            channels = width
        if stage < len(VGG16_STAGES) - 1 or last_pool:
            layers.append(nn.MaxPool2d(2, return_indices=return_indices))
    return nn.Sequential(*layers)


def start_encoder(model: nn.Module) -> None:
    """Load ``model.config.encoder_weights`` into ``model.features``, or say once per process that the
    encoder starts from random weights."""
    global _said_random
    path = model.config.encoder_weights
    if path is None:
        if not _said_random:
            _log.info(
                "%s: model.encoder_weights is null, so the VGG-16 encoder starts from random weights", model.config.name
            )
            _said_random = True
        return
    load_encoder_weights(model, path)
    _log.info("%s: VGG-16 encoder weights loaded from %s", model.config.name, path)


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Copy a torchvision VGG-16 (``model.normalization = "none"``) or VGG-16-BN (``"batch"``)
    state dict from ``path`` into ``model.features``; other keys of the file (``classifier.*``)
    are ignored.

    The first convolution is adapted to this toolkit's inputs: torchvision's input normalization
    (``(x - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel) is folded into its weights and bias,
    because images arrive here scaled to [0, 1] (exact except at the 1-pixel border, where the zero
    padding differs). For ``in_channels != 3`` its weights are then summed over RGB (one channel gets
    what a gray image repeated to RGB would give) and, for ``in_channels > 1``, repeated over the
    channels and divided by their number (C equal channels give that same response).

    Raises:
        UserError: the file is missing or unreadable, is not a VGG-16 state dict, holds the other
            variant (with/without BatchNorm) than ``model.normalization`` asks for, or its widths
            differ from ``model.base_width`` (VGG-16's is 64).
    """
    path = Path(path)
    given = _read_features(path)
    features = model.features
    expected = features.state_dict()
    _check_layout(path, given, model.config)
    weights = dict(given)
    weights["0.weight"], weights["0.bias"] = _adapt_first_conv(given["0.weight"], given["0.bias"], model.config)
    loaded = {}
    for key, target in expected.items():
        value = weights.get(key, target)  # only num_batches_tracked may be absent
        if value.shape != target.shape:
            raise UserError(
                f"{path}: features.{key} has shape {tuple(value.shape)} where VGG-16 with model.base_width = "
                f"{model.config.base_width} has {tuple(target.shape)}; pass VGG-16 weights"
            )
        loaded[key] = value.to(dtype=target.dtype)
    features.load_state_dict(loaded)


def _read_features(path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of the state dict in ``path``, without the prefix."""
    if not path.is_file():
        raise UserError(f"model.encoder_weights = {str(path)!r}: file not found; pass the path of a VGG-16 state dict")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UserError(
            f"{path}: not a readable PyTorch state dict ({type(exc).__name__}); save the weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict; pass a VGG-16 state dict")
    given = {
        key[len("features.") :]: value
        for key, value in state.items()
        if isinstance(key, str) and key.startswith("features.") and isinstance(value, torch.Tensor)
    }
    if not given:
        raise UserError(
            f"{path}: not a VGG-16 state dict (no 'features.*' tensors); pass torchvision's vgg16 or vgg16_bn weights"
        )
    return given


def layout_keys(batch_norm: bool) -> set[str]:
    """The keys of torchvision's ``vgg16`` / ``vgg16_bn`` ``features`` (without the prefix and
    without ``num_batches_tracked``)."""
    keys, index = set(), 0
    for convs in VGG16_STAGES:
        for _ in range(convs):
            keys |= {f"{index}.weight", f"{index}.bias"}
            if batch_norm:
                keys |= {f"{index + 1}.{name}" for name in ("weight", "bias", "running_mean", "running_var")}
            index += 3 if batch_norm else 2
        index += 1  # the pool
    return keys


def _check_layout(path: Path, given: dict[str, torch.Tensor], config: ModelConfig) -> None:
    wants_bn = config.normalization == "batch"
    keys = {key for key in given if not key.endswith("num_batches_tracked")}
    if keys == layout_keys(not wants_bn):
        held, setting = ("VGG-16 (without BatchNorm)", "none") if wants_bn else ("VGG-16-BN (with BatchNorm)", "batch")
        raise UserError(
            f"{path}: holds {held} weights but model.normalization = {config.normalization!r}; "
            f"set model.normalization = {setting!r} to use them"
        )
    required = layout_keys(wants_bn)
    if keys != required:
        missing, extra = sorted(required - keys), sorted(keys - required)
        what = f"missing features.{missing[0]}" if missing else f"unexpected features.{extra[0]}"
        variant = "vgg16_bn" if wants_bn else "vgg16"
        raise UserError(f"{path}: not torchvision's {variant} layout ({what}); pass a VGG-16 state dict")
    first = given["0.weight"]
    if first.dim() != 4 or first.shape[1] != 3:
        raise UserError(f"{path}: features.0.weight has shape {tuple(first.shape)}; expected VGG-16's (64, 3, 3, 3)")
    if first.shape[0] != config.base_width:
        raise UserError(
            f"{path}: its first convolution has {first.shape[0]} filters but model.base_width = {config.base_width}; "
            f"set model.base_width = {first.shape[0]}"
        )


def _adapt_first_conv(
    weight: torch.Tensor, bias: torch.Tensor, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first convolution for inputs in [0, 1] with ``config.in_channels`` channels (see
    :func:`load_encoder_weights`)."""
    weight, bias = weight.double(), bias.double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    bias = bias - (weight * mean / std).sum(dim=(1, 2, 3))
    weight = weight / std
    channels = config.in_channels
    if channels != 3:
        weight = weight.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
    return weight.float(), bias.float()
