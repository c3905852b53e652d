"""What a network costs: parameters and floating-point operations per input pixel."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_parameters", "describe", "model_cost"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_cost(model: nn.Module, size: int, in_channels: int | None = None) -> tuple[int, float]:
    """``(parameters, MFLOP per pixel)`` of ``model`` on one ``size`` x ``size`` input.

    The operations are the multiply-adds of every ``Conv2d``, ``ConvTranspose2d`` and ``Linear``,
    counted by forward hooks during one pass over a zero input of shape ``(1, C, size, size)``
    (``C``: ``in_channels``, default ``model.config.in_channels``), in eval mode without gradients.
    **One multiply-add counts as 2 FLOP** (a multiplication and an addition). Biases,
    normalization, activations, pooling and interpolation are not counted (they add a few percent
    at most). The total is divided by ``size * size``; it hardly depends on the size, except that
    the U-Net pads inputs smaller than ``2 ** depth``.
    """
    if in_channels is None:
        in_channels = model.config.in_channels
    multiply_adds = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal multiply_adds
        if isinstance(module, nn.ConvTranspose2d):
            per_input = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            multiply_adds += inputs[0].numel() * per_input
        elif isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            multiply_adds += output.numel() * per_output
        else:
            multiply_adds += output.numel() * module.in_features

    handles = [
        module.register_forward_hook(count)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return count_parameters(model), 2 * multiply_adds / (size * size) / 1e6


def describe(model: nn.Module, patch_size: int) -> str:
    """One line for the start of training, e.g. ``unet: 0.492 M parameters, 0.0268 MFLOP per pixel
    (1 multiply-add = 2 FLOP; measured on 96x96)``."""
    parameters, mflop = model_cost(model, patch_size)
    name = getattr(getattr(model, "config", None), "name", type(model).__name__)
    return (
        f"{name}: {parameters / 1e6:.3g} M parameters, {mflop:.3g} MFLOP per pixel "
        f"(1 multiply-add = 2 FLOP; measured on {patch_size}x{patch_size})"
    )
