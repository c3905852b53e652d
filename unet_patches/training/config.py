"""Settings: code defaults < ``parameters.json`` < command-line flags.

Everything resolves into one typed :class:`Config`. The code defaults are the values of the shipped
``parameters.json`` (a test holds them equal). Overrides (the flags that were actually given, or a
program's changes) are merged into the file's values *before* validation, through one function,
:func:`config_from_dict`; :func:`load_config` and :meth:`Config.merged` both end there. Loading checks
every key: an unknown key, a wrong type or an out-of-range value raises :class:`UserError` naming
the key (``training.batch_size``), the value and what was expected. Names of choices are checked
against the registries of the modules that implement them. The resolved config is written into
each run's checkpoint folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_patches.data.config import DataConfig, NucleiConfig, PatchConfig, SyntheticConfig
from unet_patches.data.pixel_weights import PIXEL_WEIGHTS, PixelWeights
from unet_patches.errors import UserError
from unet_patches.inference.config import InferenceConfig
from unet_patches.losses import LOSSES
from unet_patches.models import UPSAMPLING_MODES, ModelConfig, check_config, input_size_multiple
from unet_patches.parameters import build_typed, merge, read_parameters
from unet_patches.runtime import PRECISIONS
from unet_patches.validate import require_int, require_number

from .augment import AUGMENT_OPS, probabilities
from .optim import OPTIMIZERS, SCHEDULES, Schedule


@dataclass(frozen=True)
class TrainingConfig:
    """The training loop (``train.py`` / ``unet-patches train``)."""

    folder: str = "synthetic/train"
    epochs: int | None = 20  # None: no epoch limit, the time budget alone ends the run
    batch_size: int = 16
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_fraction: float = 0.3
    step_gamma: float = 0.1
    warmup_fraction: float = 0.03
    restart_cycles: int = 4
    restart_growth: float = 1.0
    plateau_patience: int = 3
    loss: str = "dice_ce"
    class_weights: None | str | list[float] = None
    pixel_weights: str = "none"  # "unet": the U-Net paper's weight map (data/pixel_weights.py)
    pixel_weight_w0: float = 10.0
    pixel_weight_sigma: float = 5.0
    val_fraction: float = 0.1
    folds: int = 0  # k-fold cross-validation: 0 none, else k >= 2 (unet-patches crossval)
    fold: int | None = None  # the fold this run trains (train --fold I), with folds
    samples_per_epoch: int = 2000
    foreground_fraction: float = 0.5
    flips: bool = True
    rotate90: bool = False
    val_windows_per_image: int = 8
    precision: str = "auto"
    num_workers: int = 0
    seed: int = 0
    time_budget_minutes: float | None = None
    run_name: str | None = None
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "runs"
    log_images_every: int = 1
    grad_clip: float | None = None  # None: no clipping

    def check(self) -> None:
        if self.epochs is None:
            if self.time_budget_minutes is None:
                raise UserError(
                    "training.epochs = null needs training.time_budget_minutes: set a number of epochs, "
                    "a time budget, or both"
                )
        else:
            require_int("training.epochs", self.epochs, 1)
        require_int("training.batch_size", self.batch_size, 1)
        require_number("training.learning_rate", self.learning_rate, 0.0, low_open=True)
        if self.grad_clip is not None:
            require_number("training.grad_clip", self.grad_clip, 0.0, low_open=True)
        OPTIMIZERS.check(self.optimizer, "training.optimizer")
        SCHEDULES.check(self.schedule, "training.schedule")
        LOSSES.check(self.loss, "training.loss")
        PRECISIONS.check(self.precision, "training.precision")
        if self.precision == "int8":
            raise UserError(
                "training.precision = 'int8': int8 is for inference only; train with auto, fp32, bf16 or fp16"
            )
        require_number("training.momentum", self.momentum, 0.0, 1.0, high_open=True)
        require_number("training.weight_decay", self.weight_decay, 0.0, 1.0)
        require_number("training.step_fraction", self.step_fraction, 0.0, 1.0, low_open=True)
        require_number("training.step_gamma", self.step_gamma, 0.0, 1.0, low_open=True)
        require_number("training.warmup_fraction", self.warmup_fraction, 0.0, 1.0, high_open=True)
        require_int("training.restart_cycles", self.restart_cycles, 1)
        require_number("training.restart_growth", self.restart_growth, 0.0, low_open=True)
        require_int("training.plateau_patience", self.plateau_patience, 1)
        require_number("training.val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        require_int("training.folds", self.folds, 0)
        if self.folds == 1:
            raise UserError("training.folds = 1: expected 0 (no cross-validation) or at least 2 folds")
        if self.fold is not None:
            require_int("training.fold", self.fold, 0)
            if not self.fold < self.folds:
                raise UserError(
                    f"training.fold = {self.fold}: expected a fold 0 .. training.folds - 1"
                    + (f" ({self.folds} folds)" if self.folds else "; set training.folds (crossval -k K) first")
                )
        require_number("training.foreground_fraction", self.foreground_fraction, 0.0, 1.0)
        require_int("training.samples_per_epoch", self.samples_per_epoch, 1)
        require_int("training.val_windows_per_image", self.val_windows_per_image, 1)
        require_int("training.num_workers", self.num_workers, 0)
        require_int("training.seed", self.seed, 0)
        require_int("training.log_images_every", self.log_images_every, 0)
        if self.time_budget_minutes is not None:
            require_number("training.time_budget_minutes", self.time_budget_minutes, 0.0, low_open=True)
        PIXEL_WEIGHTS.check(self.pixel_weights, "training.pixel_weights")
        self.weight_map()  # checks w0 and sigma
        if isinstance(self.class_weights, str) and self.class_weights != "median_frequency":
            raise UserError(
                f'training.class_weights = {self.class_weights!r}: expected null, "median_frequency" '
                "or a list of one weight per class"
            )

    def weight_map(self) -> PixelWeights:
        """The weight map's settings (used when ``pixel_weights`` is ``unet``)."""
        return PixelWeights(self.pixel_weight_w0, self.pixel_weight_sigma)

    def uses_pixel_weights(self) -> bool:
        return self.pixel_weights != "none"

    def cv_name(self) -> str:
        """The run folder's name without the fold: ``run_name``, or ``<folder>_b<batch_size>`` as the
        original named its runs. A cross-validation's fold ``i`` trains in ``<that>/fold_<i>``."""
        if self.run_name:
            return self.run_name
        return f"{Path(self.folder).name or 'run'}_b{self.batch_size}"


@dataclass(frozen=True)
class AugmentConfig:
    """Strong on-the-fly augmentation of training batches (:mod:`unet_patches.training.augment`): a preset, and
    per-operation probabilities that override the preset's (null: the preset's value)."""

    preset: str = "flips"
    rotate: float | None = None
    scale: float | None = None
    elastic: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    gamma: float | None = None
    noise: float | None = None
    blur: float | None = None

    def overrides(self) -> dict[str, float | None]:
        return {op: getattr(self, op) for op in AUGMENT_OPS}

    def check(self) -> None:
        probabilities(self.preset, self.overrides())


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    nuclei: NucleiConfig = field(default_factory=NucleiConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def check(self) -> Config:
        sections = (self.data, self.synthetic, self.nuclei, self.patches, self.training, self.augment, self.inference)
        for section in sections:
            section.check()
        if self.data.resize is not None and self.patches.resize_width is not None:
            raise UserError(
                f"data.resize = {self.data.resize} and patches.resize_width = {self.patches.resize_width} both resize; "
                "set one of them to null"
            )
        check_config(self.model)
        multiple = input_size_multiple(self.model)
        if self.patches.patch_size % multiple:
            raise UserError(
                f"patches.patch_size = {self.patches.patch_size}: {self.model.name} needs sizes divisible by "
                f"{multiple}; use a patch size such as {multiple * max(1, round(self.patches.patch_size / multiple))}"
            )
        if self.model.in_channels != self.data.in_channels or self.model.num_classes != self.data.num_classes:
            raise UserError(
                f"model.in_channels/num_classes ({self.model.in_channels}/{self.model.num_classes}) differ from "
                f"data.in_channels/num_classes ({self.data.in_channels}/{self.data.num_classes}): make them equal"
            )
        weights = self.training.class_weights
        if isinstance(weights, list) and len(weights) != self.data.num_classes:
            raise UserError(
                f"training.class_weights has {len(weights)} values but there are {self.data.num_classes} classes"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def patch_options(self) -> dict[str, Any]:
        """The ``patches`` settings, with the data's channels and classes and the training's pixel
        weights (stored beside the patches when asked for), as keyword arguments of
        ``patches.extract_patches``."""
        p, d, t = self.patches, self.data, self.training
        return {
            "patch_size": p.patch_size,
            "per_image": p.per_image,
            "foreground_only": p.foreground_only,
            "flips": p.flips,
            "resize_width": p.resize_width,
            "seed": p.seed,
            "preprocess": d.preprocess(),
            "cache": d.cache,
            "pixel_weights": t.weight_map() if t.uses_pixel_weights() else None,
        }

    def schedule(self) -> Schedule:
        """The learning-rate schedule ``training`` describes."""
        t = self.training
        return Schedule(
            t.schedule,
            step_fraction=t.step_fraction,
            gamma=t.step_gamma,
            warmup=t.warmup_fraction,
            cycles=t.restart_cycles,
            cycle_growth=t.restart_growth,
            patience=t.plateau_patience,
        )

    def merged(self, overrides: dict[str, dict[str, Any]]) -> Config:
        """A copy with ``overrides`` (``{section: {key: value}}``) merged in and validated as a whole;
        a ``None`` value sets the key to null."""
        return config_from_dict(merge(self.to_dict(), overrides), source="settings")


def default_config() -> Config:
    return Config().check()


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    overrides_source: str = "command line",
) -> Config:
    """Read ``parameters.json`` (the code defaults when ``path`` is None), merge ``overrides``
    (``{section: {key: value}}``, e.g. the flags that were given) into its values, then validate.

    Raises:
        UserError: the file is missing or not JSON, or the merged values hold an unknown key, a
            value of the wrong type or out of range. A wrong key or type among the overrides is
            reported as coming from ``overrides_source``, not from the file.
    """
    if overrides:
        build_typed(Config, overrides, f"{overrides_source}: ")
    if path is None:
        return config_from_dict(overrides or {}, source="settings")
    values = read_parameters(path)
    if overrides and isinstance(values, dict):
        values = merge(values, overrides)
    return config_from_dict(values, source=str(path))


def config_from_dict(values: Any, source: str = "parameters") -> Config:
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a JSON object with sections {', '.join(_section_names())}")
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # "_comment" keys are allowed
    config = build_typed(Config, values, f"{source}: ")
    try:
        return config.check()
    except UserError as exc:
        raise UserError(str(exc) if source == "settings" else f"{source}: {exc}") from None


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


# --- building and checking -------------------------------------------------------------------


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "PatchConfig",
    "SyntheticConfig",
    "NucleiConfig",
    "TrainingConfig",
    "UPSAMPLING_MODES",
    "PRECISIONS",
    "config_from_dict",
    "default_config",
    "load_config",
    "merge",
    "save_config",
]
