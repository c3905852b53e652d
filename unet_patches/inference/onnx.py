"""Exported ONNX files (:mod:`unet_patches.deploy.export`) run as networks by ONNX Runtime, so that
``predict``, ``evaluate`` and ``submit`` take a ``model.onnx`` (with its sidecar ``model.onnx.json``)
in place of a checkpoint. onnxruntime itself is imported only when a file is opened, so
``import unet_patches`` stays light. Nothing here needs torch: with the tiling engine's
:class:`~unet_patches.inference.tiling.WindowBlender` this is how a model runs where torch is not installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError, one_line
from unet_patches.metrics.calibration import check_temperature

__all__ = ["ONNX_INSTALL_HINT", "OnnxNetwork", "blender_options", "read_export", "require_onnx_package", "sidecar_path"]

log = logging.getLogger(__name__)

ONNX_INSTALL_HINT = "pip install unet-patches[onnx]"


def sidecar_path(path: str | Path) -> Path:
    """Where the sidecar JSON of an exported file goes: ``<path>.json`` (``model.onnx.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def require_onnx_package(module: str) -> Any:
    """Import ``module`` (``onnx``, ``onnxruntime``); a UserError saying how to install it if missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"ONNX export and inference need the {module} package; {ONNX_INSTALL_HINT}") from None


class OnnxNetwork:
    """An exported ONNX file run by ONNX Runtime: a float32 NumPy batch ``(N, C, H, W)`` in,
    float32 ``(N, K, H, W)`` out (on the CPU).

    ``output`` is what the file computes (``probabilities`` or ``logits``, its output's name) and
    ``activation`` what a :class:`~unet_patches.inference.tiling.WindowBlender` over it must apply: None for
    probabilities (softmax is already in the graph), ``softmax`` for logits::

        net = OnnxNetwork("model.onnx")
        labels = WindowBlender(net, 96, activation=net.activation).labels(image)

    Raises:
        UserError: onnxruntime is missing, or the file is not an ONNX export of this package.
    """

    new_outputs = True  # ONNX Runtime returns new arrays on every run

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        ort = require_onnx_package("onnxruntime")
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own types for missing or malformed files
            raise UserError(f"{path}: not a readable ONNX file ({one_line(exc, 200)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            [i.name for i in inputs] != ["image"]
            or len(outputs) != 1
            or outputs[0].name not in ("probabilities", "logits")
        ):
            raise UserError(f"{path}: not an unet-patches export (expected input 'image', output probabilities/logits)")
        self.output: str = outputs[0].name

    @property
    def activation(self) -> str | None:
        return None if self.output == "probabilities" else "softmax"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (result,) = self.session.run([self.output], {"image": np.ascontiguousarray(batch, dtype=np.float32)})
        return result


def blender_options(options: dict[str, Any]) -> dict[str, Any]:
    """``WindowBlender`` keyword arguments for an :class:`OnnxNetwork` from ``TiledPredictor`` ones:
    the torch settings dropped. It runs on the CPU, in float32 (the graph is float32), not compiled
    (``torch.compile`` cannot compile ONNX Runtime calls; asking for it is logged and ignored).

    Raises:
        UserError: ``device`` other than the CPU (None and ``auto`` mean the CPU), or int8.
    """
    device = options.get("device")
    if device is not None and str(device) not in ("cpu", "auto"):
        raise UserError(f"device {device!r}: ONNX files run on the CPU (ONNX Runtime); use --device cpu")
    if options.get("compile") is True:
        log.warning("compile ignored: torch.compile cannot compile ONNX Runtime calls")
    precision = options.get("precision", "auto")
    if precision == "int8":
        raise UserError("precision int8 quantizes a checkpoint (.pt); an ONNX file runs in float32 (use auto or fp32)")
    if precision not in ("auto", "fp32"):
        log.info("precision %r ignored: the ONNX graph runs in float32", precision)
    torch_only = ("device", "precision", "compile", "inference_copy")
    return {key: value for key, value in options.items() if key not in torch_only}


def read_export(path: str | Path, device: Any = "cpu") -> dict[str, Any]:
    """The fields of ``api.Segmenter`` for an exported ONNX file: :class:`OnnxNetwork` (ONNX
    Runtime, CPUExecutionProvider) and, from its sidecar ``<path>.json``, the training patch size,
    class names and preprocessing. ``activation`` is None for a probabilities export, ``softmax``
    for logits.

    Raises:
        UserError: the file is missing or not an export of this package, its sidecar is missing,
            unreadable or lacks a key, ``device`` is not the CPU (None and ``auto`` mean the CPU),
            or onnxruntime is missing.
    """
    path = Path(path)
    if device is not None and str(device) not in ("cpu", "auto"):
        raise UserError(f"{path}: ONNX files run on the CPU (ONNX Runtime); use --device cpu, or the checkpoint")
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    sidecar = sidecar_path(path)
    again = f"export the checkpoint again (unet-patches export CHECKPOINT --format onnx -o {path})"
    try:
        info = json.loads(sidecar.read_text())
        preprocess = Preprocess.from_dict(info["preprocess"])
        class_names = tuple(str(name) for name in info["class_names"])
        patch_size = int(info["patch_size"])
        grid = int(info.get("input_size_multiple", 16))
        large = bool(info.get("large_windows", True))
        temperature = check_temperature(info.get("temperature", 1.0), "temperature")
    except FileNotFoundError:
        raise UserError(f"{sidecar}: sidecar of {path} not found; {again}") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else one_line(exc, 120)
        raise UserError(f"{sidecar}: not a readable sidecar of {path} ({reason}); {again}") from None
    network = OnnxNetwork(path)
    fields = dict(network=network, patch_size=patch_size, class_names=class_names, preprocess=preprocess)
    return {
        **fields,
        "activation": network.activation,
        "grid": grid,
        "large_windows": large,
        "temperature": temperature,
    }
