"""The shared flag machinery: one-line usage errors, settings flags that are absent unless given
(``argparse.SUPPRESS``), and the settings they produce: ``parameters.json`` (or ``--params``) with the
given flags merged into its values before validation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unet_patches.training.config import Config

__all__ = [
    "DEFAULT_PARAMS",
    "Parser",
    "add_data_settings",
    "add_params",
    "config_from_args",
    "overrides_from",
    "params_path",
    "setting",
    "switch",
]

DEFAULT_PARAMS = "parameters.json"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def setting(parser: argparse.ArgumentParser, *flags: str, key: str, help: str, **kwargs: Any) -> None:
    """A flag that overrides the setting ``key`` (``section.name``); absent unless given."""
    parser.add_argument(*flags, dest=key, default=argparse.SUPPRESS, help=f"{help} (default: {key})", **kwargs)


def switch(parser: argparse.ArgumentParser, flag: str, *, key: str, value: bool, help: str) -> None:
    """A flag without a value that sets the boolean setting ``key`` to ``value``."""
    parser.add_argument(flag, dest=key, action="store_const", const=value, default=argparse.SUPPRESS, help=help)


def add_data_settings(parser: argparse.ArgumentParser) -> None:
    """The flags of the ``data`` settings that say how files are read (train, patches, inspect)."""
    from unet_patches.data.normalize import NORMALIZE_MODES

    setting(parser, "--normalize", key="data.normalize", choices=NORMALIZE_MODES.names, help="image normalisation")
    setting(
        parser,
        "--percentiles",
        key="data.percentiles",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="percentiles mapped to 0 and 1 by --normalize percentile",
    )
    setting(parser, "--resize", key="data.resize", type=int, nargs=2, metavar=("H", "W"), help="resize images on load")
    setting(parser, "--page", key="data.page", type=int, help="page of multi-page TIFFs, from 0")
    setting(parser, "--classes", key="data.num_classes", type=int, help="number of classes (background included)")
    setting(parser, "--channels", key="data.in_channels", type=int, help="input channels (1 gray, 3 colour)")
    switch(parser, "--no-cache", key="data.cache", value=False, help="decode files every time (no decode cache)")


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings flags that were given, as ``{section: {key: value}}``."""
    overrides: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            overrides.setdefault(section, {})[key] = list(value) if isinstance(value, list) else value
    data = overrides.get("data", {})
    # --classes / --channels set the model's counts too (they must agree).
    for key in ("num_classes", "in_channels"):
        if key in data:
            overrides.setdefault("model", {}).setdefault(key, data[key])
    if "num_classes" in data and "class_names" not in data:
        data["class_names"] = None  # the file's names are for its own number of classes
    return overrides


def add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        metavar="JSON",
        default=None,
        help=f"settings file (default: ./{DEFAULT_PARAMS} when present, else built-in defaults)",
    )


def params_path(path: str | None) -> str | None:
    """``path``, else ``./parameters.json`` when it exists, else None (the code defaults)."""
    if path is None and Path(DEFAULT_PARAMS).is_file():
        return DEFAULT_PARAMS
    return path


def config_from_args(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    from unet_patches.training.config import load_config

    return load_config(params_path(args.params), overrides_from(args) if overrides is None else overrides)
