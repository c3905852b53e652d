"""Exporting a trained network for runtimes without this package: ONNX (ONNX Runtime, TensorRT, ...)
or TorchScript (``torch.jit.load``, libtorch), with a sidecar JSON of what inference needs.

The exported graph maps float32 ``(N, in_channels, H, W)`` network input, already preprocessed as
the sidecar's ``preprocess`` says (channels, resize, normalisation and its statistics), to float32
``(N, num_classes, H, W)``: softmax probabilities over the classes (``output="probabilities"``, the
default) or the raw logits. Batch, height and width are dynamic; height and width must be positive
multiples of the sidecar's ``input_size_multiple`` (``2 ** depth``, at least the model's own
:func:`~unet_patches.models.input_size_multiple`), because sizes that pooling does not divide
take branches of the network that the traced graph does not hold. The input is named ``image``, the
output ``probabilities`` or ``logits``.

>>> export_checkpoint("checkpoints/demo/best.pt", "model.onnx", "onnx")   # also model.onnx.json

:class:`OnnxNetwork` (defined in :mod:`unet_patches.inference.onnx`, which reads exports back) runs an exported
ONNX file as a ``torch.nn.Module``, e.g. through :class:`~unet_patches.inference.tiling.TiledPredictor`;
``Segmenter.from_checkpoint("model.onnx")``, and so ``predict``, ``evaluate`` and ``submit``, run
it with its sidecar.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError
from unet_patches.inference.ensemble import ProbabilityEnsemble
from unet_patches.inference.onnx import OnnxNetwork, require_onnx_package, sidecar_path
from unet_patches.inference.segmenter import Segmenter
from unet_patches.models import ModelConfig, window_multiple
from unet_patches.registry import Registry

__all__ = ["EXPORT_FORMATS", "OUTPUTS", "OnnxNetwork", "export_checkpoint", "export_network", "sidecar_path"]

EXPORT_FORMATS: Registry[str] = Registry(
    "export format",
    {
        "onnx": "an ONNX graph (opset 17) for ONNX Runtime and other ONNX runtimes",
        "torchscript": "a traced TorchScript module for torch.jit.load and libtorch",
        "mlflow": "an MLflow pyfunc model folder for `mlflow models serve` (unet_patches.deploy.serving)",
    },
)
OUTPUTS: Registry[str] = Registry(
    "export output", {"probabilities": "softmax probabilities over the classes", "logits": "the network's raw logits"}
)
ONNX_OPSET = 17


class _Exported(nn.Module):
    """The network as exported: logits, or softmax over the class axis."""

    def __init__(self, network: nn.Module, probabilities: bool) -> None:
        super().__init__()
        self.network = network
        self.probabilities = probabilities

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.network(image)
        return torch.softmax(logits, dim=1) if self.probabilities else logits


class _ScatterUnpool(nn.Module):
    """2x2 max-unpooling as a scatter into a zero plane: the same numbers as ``nn.MaxUnpool2d(2)``,
    written with operations that both exporters trace with dynamic sizes (ONNX's TorchScript-based
    exporter has no ``max_unpool2d``, and its size check fails on traced sizes).
    ``output_size`` is ignored: exported sizes are multiples of ``2 ** depth``, so it is always twice
    the input's."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        n, c, h, w = x.shape
        plane = x.new_zeros(n, c, 4 * h * w)
        return plane.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, 2 * h, 2 * w)


def _traceable(network: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``network`` in eval mode (BatchNorm uses its running statistics), its
    2x2 max-unpooling layers replaced by :class:`_ScatterUnpool`."""
    network = copy.deepcopy(network).cpu().float().eval()
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxUnpool2d):
                if (child.kernel_size, child.stride, child.padding) not in ((2, 2, 0), ((2, 2), (2, 2), (0, 0))):
                    raise ValueError(f"cannot export {child}: only 2x2 max-unpooling with stride 2")
                setattr(module, name, _ScatterUnpool())
    return network


def export_network(
    segmenter: Segmenter, path: str | Path, fmt: str, *, output: str = "probabilities", overwrite: bool = False
) -> Path:
    """Export the network of one checkpoint to ``path`` (``fmt``: ``onnx`` or ``torchscript``) and its
    sidecar to ``<path>.json``; returns ``path``. Both files are written atomically (a temporary
    file in the same folder, then renamed); the segmenter's network is left as it was.

    Args:
        segmenter: from :meth:`~unet_patches.inference.segmenter.Segmenter.from_checkpoint` of one checkpoint.
        output: ``probabilities`` (softmax over the classes) or ``logits``.
        overwrite: replace an existing export or sidecar.

    Raises:
        UserError: an unknown format or output, an ensemble, an existing file without
            ``overwrite``, or (ONNX) the ``onnx`` package missing.
    """
    EXPORT_FORMATS.check(fmt, "format")
    OUTPUTS.check(output, "output")
    if fmt == "mlflow":
        raise UserError("the mlflow format serves a checkpoint file: use export_checkpoint (unet-patches export)")
    network = segmenter.network
    if isinstance(network, ProbabilityEnsemble) or not isinstance(getattr(network, "config", None), ModelConfig):
        raise UserError("an ensemble of checkpoints cannot be exported as one network; export one checkpoint")
    path, sidecar = Path(path), sidecar_path(path)
    for target in (path, sidecar):
        if target.exists() and not overwrite:
            raise UserError(f"{target} exists; choose another output path or pass --overwrite")
    if fmt == "onnx":
        require_onnx_package("onnx")
    config: ModelConfig = network.config
    multiple = window_multiple(config)
    exported = _Exported(_traceable(network), output == "probabilities").eval()
    # An example of a size and batch that a caller is unlikely to use, so that nothing passes by
    # accident where the trace kept a size as a constant.
    example = torch.rand(2, segmenter.in_channels, 3 * multiple, 2 * multiple)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _write_onnx if fmt == "onnx" else _write_torchscript
    write_atomically(path, lambda tmp: writer(exported, example, tmp, output))
    info = sidecar_info(segmenter, fmt, output, multiple)
    write_atomically(sidecar, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return path


def export_checkpoint(
    checkpoint_path: str | Path, path: str | Path, fmt: str, *, output: str = "probabilities", overwrite: bool = False
) -> Path:
    """:func:`export_network` of the network of one checkpoint file (rebuilt on the CPU); for ``mlflow``,
    :func:`unet_patches.deploy.serving.export_mlflow` (a model folder at ``path`` that serves labels, not a graph).

    Raises:
        UserError: as :func:`export_network`, or the checkpoint is missing or unreadable; (MLflow)
            ``output`` is not ``probabilities`` or MLflow is missing.
    """
    if "," in str(checkpoint_path) or Path(checkpoint_path).is_dir():
        raise UserError(f"{checkpoint_path}: an ensemble cannot be exported as one network; export one checkpoint")
    if fmt == "mlflow":
        from .serving import export_mlflow

        if OUTPUTS.check(output, "output") != "probabilities":
            raise UserError("the mlflow format serves label images; --logits applies to onnx and torchscript only")
        return export_mlflow(checkpoint_path, path, overwrite=overwrite)
    segmenter = Segmenter.from_checkpoint(checkpoint_path, device="cpu")
    return export_network(segmenter, path, fmt, output=output, overwrite=overwrite)


def sidecar_info(segmenter: Segmenter, fmt: str, output: str, multiple: int) -> dict[str, Any]:
    """What the sidecar JSON holds: the graph's input and output, and how to make its input."""
    from unet_patches._version import __version__

    config: ModelConfig = segmenter.network.config
    return {
        "format": fmt,
        "output": output,
        "input_name": "image",
        "output_name": output,
        "layout": "NCHW float32, preprocessed as 'preprocess' says",
        "class_names": list(segmenter.class_names),
        "num_classes": segmenter.num_classes,
        "in_channels": segmenter.in_channels,
        "patch_size": segmenter.patch_size,
        "input_size_multiple": multiple,
        "large_windows": segmenter.large_windows,
        "preprocess": segmenter.preprocess.to_dict(),
        "normalization": segmenter.preprocess.describe(),
        "temperature": segmenter.temperature,
        "calibration": "the probabilities blended over windows are calibrated as p ** (1 / temperature), "
        "normalised to sum 1 (the softmax of log(p) / temperature); labels are their argmax either way",
        "model_config": config.to_dict(),
        "unet_patches_version": __version__,
        "torch_version": torch.__version__,
    }


def _write_onnx(exported: nn.Module, example: torch.Tensor, path: Path, output: str) -> None:
    """The network as ONNX, serialised in memory and then written by Python (a failed write raises
    ``OSError``, whatever the exporter's own file handling would do)."""
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            exported,
            (example,),
            buffer,
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": axes, output: axes},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript-based exporter needs no onnxscript
        )
    path.write_bytes(buffer.getvalue())


def _write_torchscript(exported: nn.Module, example: torch.Tensor, path: Path, output: str) -> None:
    """The traced network, serialised in memory and then written by Python: ``torch.jit.save`` to a
    path aborts the whole process when the write fails (a full disk), where Python raises ``OSError``."""
    with torch.no_grad():
        traced = torch.jit.trace(exported, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())
