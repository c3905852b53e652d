"""Small data sets and configs shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unet_patches.data.synthetic import SyntheticSpec, generate_dataset
from unet_patches.training.config import default_config

SMALL_SPEC = SyntheticSpec(height=64, width=48, lines=(1, 3), ellipses=(1, 3), line_length=(10, 40))


def small_dataset(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    generate_dataset(root, n_train=n_train, n_test=n_test, seed=seed, spec=SMALL_SPEC)
    return root


def tiny_config(root: Path, folder: str, **training):
    """A config for a tiny, fast model that trains in about a second: the original's recipe (cross-entropy,
    SGD, step schedule, no warm-up), unnamed classes, and ``training`` settings on top."""
    values = dict(
        folder=folder,
        epochs=2,
        batch_size=4,
        learning_rate=0.05,
        samples_per_epoch=16,
        val_windows_per_image=2,
        checkpoint_dir=str(root / "checkpoints"),
        log_dir=str(root / "runs"),
        precision="fp32",
        loss="ce",
        schedule="step",
        warmup_fraction=0.0,
        foreground_fraction=0.33,
    )
    values.update(training)
    return default_config().merged(
        {
            "data": {"root": str(root), "class_names": None},
            "model": {"base_width": 4, "depth": 2},
            "patches": {"patch_size": 32},
            "training": values,
        }
    )


def tiny_net(in_channels: int = 1, classes: int = 3, seed: int = 0) -> nn.Module:
    """A small conv net with a 5x5 receptive field; deterministic weights."""
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 2.0)
    return net.eval()


def unet_checkpoint_state(
    config=None, *, seed: int = 0, class_names=None, patch_size: int = 32, normalize: str = "range", **extra
) -> dict:
    """What training writes into a checkpoint, for a small U-Net with seeded random weights (base
    width 4, depth 2 unless ``config`` says otherwise); ``extra`` keys replace or add to it."""
    from unet_patches.data.preprocess import Preprocess
    from unet_patches.models import ModelConfig, build_model

    config = config or ModelConfig(name="unet", base_width=4, depth=2)
    torch.manual_seed(seed)
    classes = config.num_classes
    return {
        "format_version": 2,
        "model_config": config.to_dict(),
        "model": build_model(config, pretrained=False).state_dict(),
        "class_names": list(class_names or [f"class{c}" for c in range(classes)]),
        "in_channels": config.in_channels,
        "patch_size": patch_size,
        "preprocess": Preprocess(in_channels=config.in_channels, num_classes=classes, normalize=normalize).to_dict(),
        "int8_windows": None,
        **extra,
    }


def write_unet_checkpoint(path: Path, **options) -> Path:
    """:func:`unet_checkpoint_state` saved at ``path``."""
    from unet_patches.models.checkpoint import save_checkpoint

    save_checkpoint(unet_checkpoint_state(**options), path)
    return path
