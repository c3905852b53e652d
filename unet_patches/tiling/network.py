"""Preparing a network for tiled inference: BatchNorm folded into the convolutions, the device, and
the inductor setting under which a compiled graph freezes its weights."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from unet_patches.runtime import pick_device

__all__ = ["with_batchnorm_folded", "inductor_freezing", "resolve_device"]


def with_batchnorm_folded(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with each Conv2d -> BatchNorm2d pair (adjacent in a Sequential) folded into
    one convolution; the network itself if it has no such pair. Eval mode only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(model: nn.Module) -> Iterator[tuple[nn.Sequential, str, str]]:
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

    if next(pairs(network), None) is None:
        return network
    try:
        folded = copy.deepcopy(network)
    except Exception:  # not every module can be copied; folding is only an optimisation
        return network
    folded.eval()
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    for module, first, second in list(pairs(folded)):
        module._modules[first] = fuse_conv_bn_eval(module._modules[first], module._modules[second])
        module._modules[second] = nn.Identity()
    return folded


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
