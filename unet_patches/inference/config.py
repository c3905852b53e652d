"""The ``inference`` section of ``parameters.json``, which deployment reads without the training stack
(and so without PyTorch); the file itself is read by :mod:`unet_patches.parameters`.

:class:`~unet_patches.training.config.Config` holds this section beside the others.
``predict``, ``evaluate`` and ``submit`` read only the ``inference`` section
(:func:`inference_settings`), so they run where only NumPy and ONNX Runtime are installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_patches.errors import UserError
from unet_patches.parameters import build_typed, read_parameters
from unet_patches.runtime import PRECISIONS
from unet_patches.validate import require_int, require_number

from .tiling.padding import PADDING_MODES
from .tiling.sizing import check_window
from .tiling.weights import BLEND_MODES

__all__ = ["COMPILE_CHOICES", "InferenceConfig", "check_compile", "inference_settings"]

COMPILE_CHOICES = ("auto", True, False)


def check_compile(value: object, name: str = "inference.compile") -> bool | str:
    """``value`` if it is ``auto``, true or false (:mod:`unet_patches.inference.compiling` decides ``auto``)."""
    if value not in COMPILE_CHOICES or isinstance(value, (int, float)) and not isinstance(value, bool):
        raise UserError(f"{name} = {value!r}: expected auto, true or false")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window inference (``unet-patches predict`` / ``evaluate`` / ``submit``).

    ``window``: ``auto`` (windows sized for speed, :mod:`unet_patches.inference.tiling.sizing`), ``patch`` (the
    training patch, the original's behaviour) or a size in pixels. ``overlap``: ``auto`` (pixels
    chosen from the model for ``auto`` windows, 0.5 otherwise) or a fraction in [0, 1).
    ``batch_size`` counts windows of the training patch per pass; larger windows go fewer per pass.
    ``compile``: ``auto`` (when the job's planned work repays it, :mod:`unet_patches.inference.compiling`),
    true or false.
    """

    window: int | str = "auto"
    overlap: float | str = "auto"
    batch_size: int = 32
    blend: str = "mean"
    padding: str = "reflect"
    tta: bool = False
    precision: str = "auto"
    compile: bool | str = "auto"

    def check(self) -> None:
        check_window(self.window, "inference.window")
        if self.overlap != "auto":
            if isinstance(self.overlap, str):
                raise UserError(f"inference.overlap = {self.overlap!r}: expected auto or a fraction in [0, 1)")
            require_number("inference.overlap", self.overlap, 0.0, 1.0, high_open=True)
        require_int("inference.batch_size", self.batch_size, 1)
        BLEND_MODES.check(self.blend, "inference.blend")
        PADDING_MODES.check(self.padding, "inference.padding")
        PRECISIONS.check(self.precision, "inference.precision")
        check_compile(self.compile)

    def predictor_options(self) -> dict[str, Any]:
        """These settings as keyword arguments of ``predict``, ``evaluate_folder``, ``predict_files``
        and ``write_submission`` (:mod:`unet_patches.inference.predict`), named explicitly."""
        return {
            "window": self.window,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "blend": self.blend,
            "padding": self.padding,
            "tta": self.tta,
            "precision": self.precision,
            "compile": self.compile,
        }


@dataclass(frozen=True)
class _InferenceOnly:
    inference: InferenceConfig


def inference_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> InferenceConfig:
    """The ``inference`` section of the parameters file ``path`` (the code defaults when None) with
    ``overrides`` (``{key: value}``, the flags that were given) merged in, validated. The file's other
    sections are training's and are not read.

    Raises:
        UserError: the file is unreadable or not a JSON object, or a key of its ``inference``
            section (or of ``overrides``) is unknown, of the wrong type or out of range.
    """
    overrides = overrides or {}
    build_typed(_InferenceOnly, {"inference": overrides}, "command line: ")
    section: Any = {}
    source = "settings"
    if path is not None:
        values = read_parameters(path)
        source = str(path)
        if not isinstance(values, dict):
            raise UserError(f'{path}: expected a JSON object with sections such as "inference"')
        section = values.get("inference", {})
        if not isinstance(section, dict):
            raise UserError(f"{path}: inference = {section!r}: expected a JSON object")
    settings = build_typed(_InferenceOnly, {"inference": {**section, **overrides}}, f"{source}: ").inference
    try:
        settings.check()
    except UserError as exc:
        raise UserError(str(exc) if source == "settings" else f"{source}: {exc}") from None
    return settings
