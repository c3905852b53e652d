"""What a checkpoint needs to rebuild its network: :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UserError
from ..registry import Registry
from ..validate import require_int, require_number

__all__ = ["UPSAMPLING_MODES", "ModelConfig"]

UPSAMPLING_MODES: Registry[str] = Registry(
    "upsampling mode",
    {
        "bilinear": "bilinear interpolation by 2 (no weights), as in the original",
        "transpose": "a learned 2x2 transposed convolution with stride 2",
    },
)


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: ``name`` (a key of ``models.MODELS``) and its settings.

    Stored in every checkpoint as a dict; checkpoints written before ``name`` existed hold a U-Net
    and rebuild as ``name="unet"``.

    Raises:
        UserError: a value out of range or an unknown upsampling mode, naming the ``model.*`` key.
    """

    name: str = "unet"
    in_channels: int = 1
    num_classes: int = 3
    base_width: int = 8
    depth: int = 4
    upsampling: str = "bilinear"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("in_channels", "base_width", "depth"):
            require_int(f"model.{key}", getattr(self, key), 1)
        require_int("model.num_classes", self.num_classes, 2)
        UPSAMPLING_MODES.check(self.upsampling, "model.upsampling")
        require_number("model.dropout", self.dropout, 0.0, 1.0, high_open=True)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths from the top level down to the bottleneck."""
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
