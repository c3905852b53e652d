"""Import paths of modules that moved when the package was arranged in rooms by layer (``data``,
``files``, ``inference``, ``training``, ``deploy``): ``import unet_patches.resuming`` and the like keep
working, as a module that hands out the new module's names and warns (``DeprecationWarning``) with
the new place. The table is the map from the old layout to the new one."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

MOVED = {
    "unet_patches.typed": "unet_patches.parameters",
    "unet_patches.settings": "unet_patches.inference.config",
    "unet_patches.imageio": "unet_patches.data.imageio",
    "unet_patches.masks": "unet_patches.data.masks",
    "unet_patches.preprocess": "unet_patches.data.preprocess",
    "unet_patches.cache": "unet_patches.data.cache",
    "unet_patches.folders": "unet_patches.data.folders",
    "unet_patches.synthetic": "unet_patches.data.synthetic",
    "unet_patches.patches": "unet_patches.data.patches",
    "unet_patches.folds": "unet_patches.data.folds",
    "unet_patches.sampling": "unet_patches.data.sampling",
    "unet_patches.class_weights": "unet_patches.data.class_weights",
    "unet_patches.inspection": "unet_patches.data.inspection",
    "unet_patches.config": "unet_patches.training.config",
    "unet_patches.optim": "unet_patches.training.optim",
    "unet_patches.augment": "unet_patches.training.augment",
    "unet_patches.loops": "unet_patches.training.loops",
    "unet_patches.runlog": "unet_patches.training.runlog",
    "unet_patches.charts": "unet_patches.training.charts",
    "unet_patches.run_folder": "unet_patches.training.run_folder",
    "unet_patches.resuming": "unet_patches.training.resuming",
    "unet_patches.crossval": "unet_patches.training.crossval",
    "unet_patches.experiments": "unet_patches.training.experiments",
    "unet_patches.checkpoints": "unet_patches.models.checkpoint",
    "unet_patches.tiling": "unet_patches.inference.tiling",
    "unet_patches.tiling.rows": "unet_patches.files.rows",
    "unet_patches.tiling.sources": "unet_patches.files.sources",
    "unet_patches.tiling.slides": "unet_patches.files.slides",
    "unet_patches.tiling.writers": "unet_patches.files.writers",
    "unet_patches.tiling.blocks": "unet_patches.files.row_blocks",
    "unet_patches.tiling.shared_zarr": "unet_patches.files.shared_zarr",
    "unet_patches.tiling.files": "unet_patches.files.plan",
    "unet_patches.tiling.placement": "unet_patches.inference.tiling.placement",
    "unet_patches.tiling.sizing": "unet_patches.inference.tiling.sizing",
    "unet_patches.tiling.blending": "unet_patches.inference.tiling.weights",
    "unet_patches.tiling.padding": "unet_patches.inference.tiling.padding",
    "unet_patches.tiling.merger": "unet_patches.inference.tiling.merger",
    "unet_patches.tiling.blender": "unet_patches.inference.tiling.blender",
    "unet_patches.tiling.engine": "unet_patches.inference.tiling.engine",
    "unet_patches.tiling.network": "unet_patches.inference.tiling.network",
    "unet_patches.sharding": "unet_patches.files.shards",
    "unet_patches.compiling": "unet_patches.inference.job",
    "unet_patches.ensemble": "unet_patches.inference.ensemble",
    "unet_patches.onnx_network": "unet_patches.inference.onnx",
    "unet_patches.quantizing": "unet_patches.inference.int8",
    "unet_patches.export": "unet_patches.deploy.export",
    "unet_patches.serving": "unet_patches.deploy.serving",
    "unet_patches.submission": "unet_patches.deploy.submission",
    "unet_patches.rle": "unet_patches.deploy.rle",
}
"""Old module -> the module that holds its contents now."""

ALSO: dict[str, tuple[str, ...]] = {
    "unet_patches.settings": ("unet_patches.runtime", "unet_patches.parameters"),
    "unet_patches.preprocess": ("unet_patches.data.normalize",),
    "unet_patches.patches": ("unet_patches.data.patch_folder",),
    "unet_patches.tiling": (
        "unet_patches.files.plan",
        "unet_patches.files.rows",
        "unet_patches.files.sources",
        "unet_patches.files.writers",
    ),
    "unet_patches.tiling.files": ("unet_patches.files.formats",),
    "unet_patches.tiling.merger": ("unet_patches.files.writers",),
    "unet_patches.compiling": ("unet_patches.inference.compiling",),
    "unet_patches.checkpoints": ("unet_patches.training.state",),
    "unet_patches.data": ("unet_patches.training.datasets", "unet_patches.deploy.calibrate"),
}
"""Further modules that hold names of an old module (the first of :data:`MOVED` is searched first)."""

RENAMED = {("unet_patches.optim", "Progress"): "RunClock"}
"""Names that changed as they moved: (old module, old name) -> the new name in its new module."""

REMOVED = {
    ("unet_patches.compiling", "settle_job"): "unet_patches.inference.job.PredictionJob, which decides precision and "
    "compile once for a job (its .precision and .compile)",
    ("unet_patches.compiling", "compile_for_job"): "unet_patches.inference.job.PredictionJob(...).compile",
    ("unet_patches.compiling", "planned_work"): "unet_patches.inference.job.PredictionJob.planned_work",
    ("unet_patches.checkpoints", "checkpoint_state"): "unet_patches.training.state.run_state",
    ("unet_patches.sharding", "predict_row_block"): "unet_patches.inference.predict.predict_files with a shard (or "
    "files.shards.open_row_block and PredictionJob.write_block)",
}
"""Names that are gone, and what does their work now."""


def _forward(old: str, module: Any) -> None:
    """Give the module object ``module`` (of the old path ``old``) the names of its new modules."""
    targets = (*([MOVED[old]] if old in MOVED else []), *ALSO.get(old, ()))

    def forwarded(name: str) -> Any:
        if (old, name) in REMOVED:
            raise AttributeError(f"{old}.{name} was removed; use {REMOVED[old, name]}")
        wanted = RENAMED.get((old, name), name)
        for target in targets:
            found = getattr(importlib.import_module(target), wanted, _MISSING)
            if found is not _MISSING:
                return found
        raise AttributeError(f"module {old!r} (now {', '.join(targets)}) has no attribute {name!r}")

    module.__getattr__ = forwarded


_MISSING = object()
_OLD_PACKAGES = {"unet_patches.tiling"}


class _Forwarder(importlib.abc.Loader):
    """Makes an old module: its names are those of the modules that hold them now, looked up on use."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: Any) -> None:
        old = module.__name__
        warnings.warn(f"{old} has moved to {MOVED[old]}; import from there", DeprecationWarning, stacklevel=2)
        _forward(old, module)
        module.__doc__ = f"Moved to {MOVED[old]}."


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Forwarder(), is_package=fullname in _OLD_PACKAGES)


def install() -> None:
    """Let the old import paths resolve (after every real module: the finder is asked last). The old
    ``unet_patches.data`` module's names are looked up on the ``data`` package, which the training
    datasets left for ``unet_patches.training.datasets`` (the old ``training`` module's names are the
    ``training`` package's own, :mod:`unet_patches.training`)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
        _forward("unet_patches.data", importlib.import_module("unet_patches.data"))
