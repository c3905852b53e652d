"""Preparing a network for tiled inference: a copy with BatchNorm folded into the convolutions and the
U-Net's concatenations split, the device, and the inductor setting under which a compiled graph
freezes its weights."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from unet_patches.models.blocks import SplitInput
from unet_patches.models.unet import Up
from unet_patches.runtime import pick_device

__all__ = ["inductor_freezing", "inference_copy", "resolve_device"]


def inference_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` rewritten for inference, in eval mode and without gradients: each
    Conv2d -> BatchNorm2d pair (adjacent in a Sequential) folded into one convolution, then each
    U-Net decoder level fed its skip connection and upsampled map apart instead of concatenated
    (:meth:`~unet_patches.models.unet.Up.split_input`). The network itself if neither applies, or if
    it cannot be copied (both are only optimisations)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    splittable = any(isinstance(m, Up) and SplitInput.fits(m.conv, m.skip_channels) for m in network.modules())
    if next(_conv_batchnorm_pairs(network), None) is None and not splittable:
        return network
    try:
        rewritten = copy.deepcopy(network)
    except Exception:
        return network
    rewritten.eval()
    for parameter in rewritten.parameters():
        parameter.requires_grad_(False)
    for module, first, second in list(_conv_batchnorm_pairs(rewritten)):
        module._modules[first] = fuse_conv_bn_eval(module._modules[first], module._modules[second])
        module._modules[second] = nn.Identity()
    for up in [m for m in rewritten.modules() if isinstance(m, Up)]:  # after the folding (the bias)
        up.split_input()  # where its block fits SplitInput
    return rewritten


def _conv_batchnorm_pairs(model: nn.Module) -> Iterator[tuple[nn.Sequential, str, str]]:
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if (
                    type(conv) is nn.Conv2d
                    and type(norm) is nn.BatchNorm2d
                    and norm.track_running_stats
                    and norm.num_features == conv.out_channels
                ):
                    yield module, first, second


def inductor_freezing() -> contextlib.AbstractContextManager:
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def resolve_device(device: str | torch.device | None, network: nn.Module | None) -> torch.device:
    """``device`` as :func:`~unet_patches.runtime.pick_device` reads it; None: where the network's
    parameters are (the CPU for a plain function)."""
    if device is None:
        parameter = None if network is None else next(network.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")
    return pick_device(str(device))
