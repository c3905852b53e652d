"""Choices by name: one Registry shape, used by the settings, the command line and the docs."""

import argparse

import pytest

from unet_patches.cli import build_parser
from unet_patches.data.normalize import NORMALIZE_MODES
from unet_patches.data.pixel_weights import PIXEL_WEIGHTS
from unet_patches.errors import UserError
from unet_patches.inference.tiling.padding import PADDING_MODES
from unet_patches.inference.tiling.weights import BLEND_MODES
from unet_patches.losses import LOSSES
from unet_patches.models import ACTIVATIONS, DOWNSAMPLING_MODES, MODELS, NORMALIZATIONS, UPSAMPLING_MODES
from unet_patches.registry import Registry
from unet_patches.runtime import PRECISIONS, TRAINING_PRECISIONS
from unet_patches.training.augment import PRESETS
from unet_patches.training.optim import OPTIMIZERS, SCHEDULES

REGISTRIES = {
    "augment.preset": PRESETS,
    "data.normalize": NORMALIZE_MODES,
    "training.pixel_weights": PIXEL_WEIGHTS,
    "model.name": MODELS,
    "model.upsampling": UPSAMPLING_MODES,
    "model.downsampling": DOWNSAMPLING_MODES,
    "model.normalization": NORMALIZATIONS,
    "model.activation": ACTIVATIONS,
    "training.loss": LOSSES,
    "training.optimizer": OPTIMIZERS,
    "training.schedule": SCHEDULES,
    "training.precision": TRAINING_PRECISIONS,
    "inference.blend": BLEND_MODES,
    "inference.padding": PADDING_MODES,
    "inference.precision": PRECISIONS,
}


def test_a_miss_names_the_setting_lists_the_names_and_suggests_the_closest():
    registry = Registry("colour", {"red": 1, "green": 2, "blue": 3})
    assert registry.lookup("green") == 2 and registry.names == ("red", "green", "blue")
    with pytest.raises(
        UserError,
        match=r"^paint = 'gren': unknown colour \(did you mean 'green'\?\); expected one of red, green, blue$",
    ):
        registry.lookup("gren", "paint")
    with pytest.raises(UserError, match=r"^colour = 7: unknown colour; expected one of"):
        registry.check(7)


def _choices(argv: list[str], dest: str) -> tuple:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = subparsers.choices[argv[0]]
    return tuple(next(a for a in command._actions if a.dest == dest).choices)


@pytest.mark.parametrize(
    "command, key",
    [("train", "model.name"), ("train", "training.loss"), ("train", "training.optimizer"),
     ("train", "training.schedule"), ("train", "training.precision"), ("predict", "inference.blend"),
     ("predict", "inference.padding"), ("evaluate", "inference.precision")],
)  # fmt: skip
def test_command_line_choices_are_the_registry(command, key):
    assert _choices([command], key) == REGISTRIES[key].names


def test_parameters_doc_names_every_choice(repo_root):
    """docs/PARAMETERS.md lists every registered name in the row of its setting."""
    doc = (repo_root / "docs" / "PARAMETERS.md").read_text()
    for key, registry in REGISTRIES.items():
        section, name = key.split(".")
        table = doc[doc.index(f"## `{section}`") :]
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`"))
        missing = [choice for choice in registry.names if f"`{choice}`" not in row]
        assert not missing, f"{key}: {missing} not in its docs/PARAMETERS.md row"
    assert "median_frequency" in doc  # training.class_weights, a choice outside the registries
