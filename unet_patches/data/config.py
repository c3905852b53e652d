"""The ``data``, ``synthetic``, ``nuclei`` and ``patches`` sections of ``parameters.json``: where data lives and what
it holds (and how files become network input, :meth:`DataConfig.preprocess`), the synthetic generator,
and random patch extraction. :class:`~unet_patches.training.config.Config` puts them together with
the other sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unet_patches.errors import UserError
from unet_patches.validate import require_int

from .masks import mask_tables
from .normalize import NORMALIZE_MODES
from .nuclei import NucleiSpec
from .preprocess import Preprocess
from .synthetic import CLASS_NAMES, SyntheticSpec

__all__ = ["SYNTHETIC_KINDS", "DataConfig", "NucleiConfig", "PatchConfig", "SyntheticConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Where data lives and what it holds."""

    root: str = "data"
    in_channels: int = 1
    num_classes: int = 3
    class_names: list[str] | None = field(default_factory=lambda: list(CLASS_NAMES))
    normalize: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    resize: list[int] | None = None
    page: int | None = None
    mask_values: dict[str, int] | None = None
    mask_colors: dict[str, int] | None = None
    cache: bool = True

    def check(self) -> None:
        require_int("data.in_channels", self.in_channels, 1)
        require_int("data.num_classes", self.num_classes, 2)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise UserError(
                f"data.class_names has {len(self.class_names)} names but data.num_classes = {self.num_classes}: "
                "give one name per class or null"
            )
        NORMALIZE_MODES.check(self.normalize, "data.normalize")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise UserError(f"data.percentiles = {list(self.percentiles)}: expected 0 <= low < high <= 100")
        if self.resize is not None:
            if len(self.resize) != 2:
                raise UserError(f"data.resize = {self.resize}: expected [height, width] or null")
            for value in self.resize:
                require_int("data.resize", value, 8)
        if self.page is not None:
            require_int("data.page", self.page, 0)
        self.preprocess()  # checks the mask tables

    def preprocess(self) -> Preprocess:
        """How these settings turn files into network input (dataset statistics not yet computed)."""
        values, colors = mask_tables(self.mask_values, self.mask_colors, self.num_classes)
        return Preprocess(
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            normalize=self.normalize,
            percentiles=tuple(self.percentiles),
            resize=None if self.resize is None else (self.resize[0], self.resize[1]),
            page=self.page,
            mask_values=values,
            mask_colors=colors,
        )

    def names(self) -> list[str]:
        return list(self.class_names) if self.class_names else [f"class{c}" for c in range(self.num_classes)]


SYNTHETIC_KINDS = ("shapes", "nuclei")
"""What ``unet-patches generate`` draws: the lines and ellipses (``synthetic``), or nuclei (``nuclei``)."""


@dataclass(frozen=True)
class SyntheticConfig(SyntheticSpec):
    """The synthetic generator (``unet-patches generate``): the kind, counts and seed, and the spec of
    the shapes (the nuclei's is the ``nuclei`` section)."""

    kind: str = "shapes"
    n_train: int = 100
    n_test: int = 50
    seed: int = 0

    def check(self) -> None:
        if self.kind not in SYNTHETIC_KINDS:
            raise UserError(f"synthetic.kind = {self.kind!r}: expected one of {', '.join(SYNTHETIC_KINDS)}")
        require_int("synthetic.n_train", self.n_train, 0)
        require_int("synthetic.n_test", self.n_test, 0)
        if self.n_train + self.n_test == 0:
            raise UserError(
                "synthetic.n_train = 0 and synthetic.n_test = 0: nothing to generate; ask for at least one image"
            )
        self.spec().validate()

    def dataset_options(self) -> dict[str, Any]:
        """These settings as keyword arguments of ``synthetic.generate_dataset``."""
        return {"n_train": self.n_train, "n_test": self.n_test, "seed": self.seed, "spec": self.spec()}

    def spec(self) -> SyntheticSpec:
        names = [f.name for f in dataclasses.fields(SyntheticSpec)]
        return SyntheticSpec(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True)
class NucleiConfig(NucleiSpec):
    """The nuclei generator (``unet-patches generate --kind nuclei``): the image spec, and whether
    instance masks are written too. Counts and seed are ``synthetic``'s."""

    instances: bool = True

    def check(self) -> None:
        self.spec().validate()

    def spec(self) -> NucleiSpec:
        names = [f.name for f in dataclasses.fields(NucleiSpec)]
        return NucleiSpec(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True)
class PatchConfig:
    """Random patch extraction (``unet-patches patches``)."""

    patch_size: int = 96
    per_image: int = 20
    foreground_only: bool = True
    flips: bool = True
    resize_width: int | None = None
    seed: int = 0

    def check(self) -> None:
        require_int("patches.patch_size", self.patch_size, 8)
        require_int("patches.per_image", self.per_image, 1)
        require_int("patches.seed", self.seed, 0)
        if self.resize_width is not None:
            require_int("patches.resize_width", self.resize_width, self.patch_size)
