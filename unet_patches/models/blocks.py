"""Layers the architectures share: convolution -> normalization -> activation, and the input-size
rule of the models whose pooling needs sizes divisible by a power of two.

Convolution, BatchNorm and activation sit next to each other in one ``nn.Sequential`` so that
inference can fold the BatchNorm into the convolution (``tiling/network.py``). :class:`SplitInput`
runs such a block on two maps as if concatenated, for inference.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SplitInput", "activation_layer", "conv_norm_act", "require_divisible"]


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


class SplitInput(nn.Module):
    """``block(torch.cat([a, b], dim=1))`` without the concatenation, for inference.

    The block's first convolution is split by input channels into one over ``a`` (with the bias)
    and one over ``b``; their outputs are summed and the rest of the block runs on the sum. The same
    function up to float rounding. In channels-last memory a concatenation along the channels
    interleaves both maps pixel by pixel, and at a U-Net's top level that copy costs more than the
    second convolution and the sum (BENCHMARKS.md, tiled inference).
    """

    def __init__(self, block: nn.Sequential, first_channels: int) -> None:
        super().__init__()
        if not self.fits(block, first_channels):
            raise ValueError("SplitInput needs a block whose first layer is a plain convolution over more channels")
        conv = block[0]
        self.first = _conv_over(conv, conv.weight[:, :first_channels], conv.bias)
        self.second = _conv_over(conv, conv.weight[:, first_channels:], None)
        self.rest = nn.Sequential(*list(block)[1:])

    @staticmethod
    def fits(block: nn.Module, first_channels: int) -> bool:
        """Whether ``block`` starts with a convolution that can be split after ``first_channels``."""
        if not isinstance(block, nn.Sequential) or len(block) == 0 or type(block[0]) is not nn.Conv2d:
            return False
        conv = block[0]
        return conv.groups == 1 and conv.padding_mode == "zeros" and 0 < first_channels < conv.in_channels

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(a).add_(self.second(b)))


def _conv_over(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A convolution like ``conv`` with these weights (input channels from ``weight``) and bias."""
    layer = nn.Conv2d(
        weight.shape[1],
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.requires_grad_(conv.weight.requires_grad)
