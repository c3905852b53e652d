"""What a checkpoint needs to rebuild its network: :class:`ModelConfig`, and the registries of its
choices (upsampling, downsampling, normalization, activation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from unet_patches.errors import UserError
from unet_patches.registry import Registry
from unet_patches.validate import require_int, require_number

__all__ = [
    "ACTIVATIONS",
    "DOWNSAMPLING_MODES",
    "NORMALIZATIONS",
    "UPSAMPLING_MODES",
    "ModelConfig",
    "check_fixed",
    "resolve_config",
]

UPSAMPLING_MODES: Registry[str] = Registry(
    "upsampling mode",
    {
        "bilinear": "bilinear interpolation by 2 (no weights), as in the original",
        "nearest": "nearest-neighbour repetition by 2 (no weights)",
        "transpose": "a learned 2x2 transposed convolution with stride 2 (halves the channels)",
    },
)

DOWNSAMPLING_MODES: Registry[str] = Registry(
    "downsampling mode",
    {
        "maxpool": "2x2 max-pooling with stride 2, as in the original",
        "strided_conv": "a learned 3x3 convolution with stride 2 (then normalization and activation)",
    },
)

NORMALIZATIONS: Registry[str] = Registry(
    "normalization",
    {
        "batch": "BatchNorm after every convolution (convolutions without bias), as in the original",
        "none": "no normalization layers (convolutions with bias)",
    },
)

ACTIVATIONS: Registry[str] = Registry(
    "activation",
    {"relu": "ReLU, as in the original", "leaky_relu": "LeakyReLU with negative slope 0.01 (PyTorch's default)"},
)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: ``name`` (a key of ``models.MODELS``) and its settings.

    Stored in every checkpoint as a dict; checkpoints written before ``name`` existed hold a U-Net
    and rebuild as ``name="unet"``. Every key added later has a default that rebuilds the network
    those checkpoints hold. A model ignores the settings it does not read (docs/MODELS.md); they
    must then be left at their defaults (or at the value the model has anyway), see
    :func:`check_fixed`.

    ``encoder_weights`` is the path of a torchvision VGG-16 / VGG-16-BN state dict for the encoders
    of ``vgg16_unet`` and ``segnet``; the file is only read by ``build_model``, so a checkpoint's
    config rebuilds without it.

    Raises:
        UserError: a value out of range or an unknown choice, naming the ``model.*`` key.
    """

    name: str = "unet"
    in_channels: int = 1
    num_classes: int = 3
    base_width: int = 8
    depth: int = 4
    upsampling: str = "bilinear"
    dropout: float = 0.0
    downsampling: str = "maxpool"
    normalization: str = "batch"
    activation: str = "relu"
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        for key in ("in_channels", "base_width", "depth"):
            require_int(f"model.{key}", getattr(self, key), 1)
        require_int("model.num_classes", self.num_classes, 2)
        UPSAMPLING_MODES.check(self.upsampling, "model.upsampling")
        DOWNSAMPLING_MODES.check(self.downsampling, "model.downsampling")
        NORMALIZATIONS.check(self.normalization, "model.normalization")
        ACTIVATIONS.check(self.activation, "model.activation")
        require_number("model.dropout", self.dropout, 0.0, 1.0, high_open=True)
        if self.encoder_weights is not None and (not isinstance(self.encoder_weights, str) or not self.encoder_weights):
            raise UserError(
                f"model.encoder_weights = {self.encoder_weights!r}: expected the path of a VGG-16 state dict or null"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths from the top level down to the bottleneck (the U-Nets)."""
        return tuple(self.base_width * 2**level for level in range(self.depth + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown model setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}"
            )
        return cls(**values)


def check_fixed(config: ModelConfig, fixed: Mapping[str, tuple[Any, str]]) -> None:
    """Check the settings a model does not read: ``fixed`` maps each to ``(the value the model has
    anyway or None, why)``. Such a setting may keep its default or name that value; anything else
    would suggest a network that is not built, so it raises ``UserError`` naming the key."""
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key, (actual, why) in fixed.items():
        value = getattr(config, key)
        allowed = [defaults[key]] + ([actual] if actual is not None and actual != defaults[key] else [])
        if value not in allowed:
            options = " or ".join("null" if v is None else repr(v) for v in allowed)
            raise UserError(
                f"model.{key} = {value!r} does not apply to {config.name} ({why}); leave it out or set {options}"
            )


def resolve_config(config: ModelConfig | None, overrides: dict[str, Any], name: str) -> ModelConfig:
    """The config a model class is built from: ``config`` with ``overrides`` (keyword arguments)
    applied, or a default config of model ``name`` with them."""
    if config is None:
        config = ModelConfig(**{"name": name, **overrides})
    elif overrides:
        config = ModelConfig(**{**config.to_dict(), **overrides})
    if config.name != name:
        raise ValueError(f"a {name} cannot be built from a config for {config.name!r}; use models.build_model")
    return config
