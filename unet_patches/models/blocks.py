"""Layers the architectures share: convolution -> normalization -> activation, and the input-size
rule of the models whose pooling needs sizes divisible by a power of two.

Convolution, BatchNorm and activation sit next to each other in one ``nn.Sequential`` so that
inference can fold the BatchNorm into the convolution (``tiling/network.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["activation_layer", "conv_norm_act", "require_divisible"]


def activation_layer(name: str) -> nn.Module:
    """The activation a ``model.activation`` name stands for (``models.ACTIVATIONS``)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"unknown activation {name!r}")


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    normalization: str = "batch",
    activation: str = "relu",
    stride: int = 1,
    bias: bool | None = None,
) -> list[nn.Module]:
    """A "same" convolution (padding ``kernel_size // 2``), BatchNorm unless ``normalization`` is
    ``"none"``, then the activation. The convolution has a bias only without BatchNorm, unless
    ``bias`` says otherwise (VGG's layout keeps it)."""
    if normalization not in ("batch", "none"):
        raise ValueError(f"unknown normalization {normalization!r}")
    batch = normalization == "batch"
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=(not batch) if bias is None else bias,
        )
    ]
    if batch:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation_layer(activation))
    return layers


def require_divisible(x: torch.Tensor, poolings: int, model_name: str) -> None:
    """``ValueError`` unless the height and width of ``x`` are multiples of ``2 ** poolings``."""
    multiple = 2**poolings
    height, width = x.shape[-2:]
    for side, size in (("height", height), ("width", width)):
        if size % multiple:
            raise ValueError(
                f"input {side} {size} is not a multiple of {multiple}: {model_name} needs heights and widths "
                f"divisible by 2**{poolings} = {multiple} (e.g. {2 * multiple} or {3 * multiple}); "
                "use a patch size that is a multiple of it"
            )
