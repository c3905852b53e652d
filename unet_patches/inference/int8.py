"""int8 inference (``precision: int8``): a checkpoint's network quantized by OpenVINO and NNCF,
checked by an accuracy guard, and cached beside the checkpoint.

- **Calibration.** Static post-training quantization (NNCF: int8 weights per channel, activations
  per tensor, full bias correction) on the training windows every checkpoint keeps
  (``int8_windows.calibration``, :func:`~unet_patches.training.datasets.int8_windows`).
- **Accuracy guard.** The quantized network's argmax labels are compared with the float32 network's on
  the checkpoint's held-back (validation) windows; when any class's IoU against the float labels is
  below :data:`GUARD_MIN_IOU`, int8 is refused with the per-class figures (:class:`Guard`).
- **Cache.** ``<checkpoint>.int8/`` (``best.pt.int8/``) holds the quantized network (OpenVINO IR,
  ``model.xml`` + ``model.bin``) and ``info.json`` (the checkpoint's SHA-256, the guard's figures,
  the OpenVINO version, the SHA-256 of the two model files). It is written whole (a temporary folder
  renamed) and rebuilt when the checkpoint's contents or the OpenVINO version differ, or when a model
  file was altered or does not fit the checkpoint's network (one warning); a failed guard is cached
  too, so ``auto`` does not retry it. Where the checkpoint's folder is read-only the network is kept
  for the process only.

OpenVINO rather than torch's own int8 (PT2E, X86InductorQuantizer), because torch's int8 was no
faster than bf16 autocast where OpenVINO's was (BENCHMARKS.md, int8). ``openvino`` and ``nncf`` are
the optional ``int8`` extra, imported only here and only when int8 is asked for or chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_patches.errors import UserError, one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .segmenter import Segmenter

__all__ = [
    "BUILD_MIN_PIXELS",
    "GUARD_MIN_IOU",
    "INT8_INSTALL_HINT",
    "Guard",
    "Int8Network",
    "cache_folder",
    "int8_for_job",
    "int8_network",
    "int8_network_of",
]

log = logging.getLogger(__name__)

INT8_INSTALL_HINT = "pip install 'unet-patches[int8]' (OpenVINO + NNCF)"
GUARD_MIN_IOU = 0.99
"""The lowest IoU, per class, of the int8 network's labels against the float network's on the held-back
windows for int8 to be used."""
BUILD_MIN_PIXELS = 50_000_000
"""Network input pixels of a job (windows x window area) from which ``precision: auto`` quantizes a
checkpoint that has no int8 network cached yet: the one-off (convert, calibrate, guard) is then a
small part of the job. Below it, ``auto`` uses a cached int8 network only."""


@dataclass(frozen=True)
class Guard:
    """The accuracy guard's figures: per class, the IoU of the int8 labels against the float labels on
    ``windows`` held-back windows (None: the class is in neither), and their pixel agreement."""

    iou: dict[str, float | None]
    agreement: float
    windows: int

    @property
    def passed(self) -> bool:
        return all(value is None or value >= GUARD_MIN_IOU for value in self.iou.values())

    def describe(self) -> str:
        parts = []
        for name, value in self.iou.items():
            if value is None:
                parts.append(f"{name} absent")
            else:
                low = f" (< {GUARD_MIN_IOU})" if value < GUARD_MIN_IOU else ""
                parts.append(f"{name} {value:.4f}{low}")
        return (
            f"IoU against float labels on {self.windows} held-back windows: {', '.join(parts)}; "
            f"pixels agreeing {100 * self.agreement:.3f} %"
        )


class Int8Network:
    """The quantized network compiled by OpenVINO for the CPU: a float32 tensor ``(N, C, h, w)`` in,
    float32 class probabilities ``(N, K, h, w)`` out (the softmax is in the graph, computed by OpenVINO,
    which is cheaper than torch's softmax after it), any batch and window size (one dynamic-shape
    compile). Operations left in float run in float32 (OpenVINO would pick bf16 on AMX CPUs; float32 is
    as fast there and agrees better with the float network)."""

    activation = None  # what a blender must still apply: nothing
    new_outputs = True  # every call returns arrays of its own (share_outputs is off)

    def __init__(self, model: Any) -> None:
        import openvino as ov
        import torch

        config = {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = ov.Core().compile_model(model, "CPU", config)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        out = self.compiled(np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def cache_folder(checkpoint: str | Path) -> Path:
    """Where the int8 network of ``checkpoint`` is cached: ``<checkpoint>.int8/`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".int8")


CACHE_FORMAT = 2
"""What ``info.json`` calls the layout of the cached network (1: probabilities out; 2: and the
SHA-256 of its files); another is rebuilt."""
_MODEL_FILES = ("model.xml", "model.bin")

_KEPT: dict[tuple[str, str], tuple[Int8Network | None, Guard]] = {}
"""Int8 networks (or failed guards) built or read in this process: (checkpoint, its SHA-256) -> them."""
_DIGESTS: dict[tuple[str, int, int], str] = {}


def int8_network(
    checkpoint: str | Path, network: nn.Module, class_names: tuple[str, ...], *, build: bool = True
) -> tuple[Int8Network | None, Guard | None]:
    """The int8 network of ``checkpoint`` and its guard's figures: kept from earlier in the process,
    read from the cache beside the checkpoint, or (``build``) quantized now and cached.

    Returns ``(network, guard)``; the network is None when the guard failed, and both are None when
    nothing is cached and ``build`` is false. ``network`` is the checkpoint's float network.

    Raises:
        UserError: openvino or nncf is missing, or (building) the checkpoint holds no int8 windows.
    """
    require_int8_packages()
    import openvino as ov

    path = Path(checkpoint)
    key = (str(path.resolve()), _digest(path))
    if key in _KEPT:
        return _KEPT[key]
    folder = cache_folder(path)
    info = _read_info(folder)
    current = {"checkpoint_sha256": key[1], "openvino": ov.__version__, "format": CACHE_FORMAT}
    if info is not None and all(info.get(k) == v for k, v in current.items()):
        guard = Guard(info["iou"], float(info["agreement"]), int(info["windows"]))
        try:
            model = _read_cached_model(folder, info, network, len(class_names)) if guard.passed else None
        except ValueError as exc:
            log.warning("%s: int8 cache damaged (%s); %s", folder, exc, "building it again" if build else "not used")
        else:
            _KEPT[key] = (Int8Network(model) if model is not None else None, guard)
            return _KEPT[key]
    if not build:
        return None, None
    calibration, held_back = _stored_windows(path)
    log.info("int8: quantizing %s on %d calibration windows (one-off, cached)", path, calibration.shape[0])
    model = quantize(network, calibration)
    quantized = Int8Network(model)
    guard = check(network, quantized, held_back, class_names)
    log.info("int8 accuracy guard %s: %s", "passed" if guard.passed else "FAILED", guard.describe())
    _write_cache(folder, model, guard, key[1])
    _KEPT[key] = (quantized if guard.passed else None, guard)
    return _KEPT[key]


def int8_network_of(segmenter: Segmenter, device: Any = None) -> Int8Network:
    """The int8 network of a :class:`~unet_patches.inference.segmenter.Segmenter`'s checkpoint, built if need be.

    Raises:
        UserError: an ensemble or ONNX file (no single checkpoint), a device other than the CPU, the
            extra missing, no calibration windows in the checkpoint, or the accuracy guard failed.
    """
    if segmenter.checkpoint is None:
        raise UserError("precision int8 quantizes one checkpoint (.pt), not an ensemble or an ONNX file")
    if str(device or "cpu") not in ("cpu", "auto"):
        raise UserError(f"precision int8 runs on the CPU (OpenVINO), not on {device}; use --device cpu")
    network, guard = int8_network(segmenter.checkpoint, segmenter.network, segmenter.class_names)
    if network is None:
        raise UserError(
            f"{segmenter.checkpoint}: int8 refused by its accuracy guard ({guard.describe()}); "  # type: ignore[union-attr]
            "use --precision auto, bf16 or fp32"
        )
    return network


_SAID: set[tuple[str, str]] = set()


def int8_for_job(segmenter: Segmenter, pixels: Callable[[], int], device: Any = None) -> bool:
    """Whether ``precision: auto`` runs a job in int8: on a CPU with int8 dot products (VNNI or AMX), for
    one checkpoint (not an ensemble or ONNX file), with the int8 extra installed, when its int8 network
    passed the guard: cached already, or built now for a job whose network input (``pixels()``, asked
    only then) is at least :data:`BUILD_MIN_PIXELS`."""
    checkpoint = segmenter.checkpoint
    if checkpoint is None or str(device or "cpu") not in ("cpu", "auto"):
        return False
    from unet_patches.runtime import cpu_has_int8_dot, pick_device

    if pick_device(None if device is None else str(device)).type != "cpu" or not cpu_has_int8_dot():
        return False
    if _missing_packages():
        _say_once(checkpoint, "no-extra", "precision auto: this CPU runs int8 fast; %s enables it", INT8_INSTALL_HINT)
        return False
    try:
        network, guard = int8_network(checkpoint, segmenter.network, segmenter.class_names, build=False)
        if guard is None and pixels() >= BUILD_MIN_PIXELS:
            network, guard = int8_network(checkpoint, segmenter.network, segmenter.class_names)
    except UserError as exc:
        _say_once(checkpoint, "no-windows", "precision auto: not int8 (%s)", exc)
        return False
    if guard is None:
        _say_once(
            checkpoint,
            "not-built",
            "precision auto: %s has no int8 network yet; a job of %d Mpx or more builds it, or --precision int8",
            checkpoint,
            BUILD_MIN_PIXELS // 1_000_000,
        )
        return False
    if network is None:
        _say_once(checkpoint, "guard", "precision auto: not int8, its accuracy guard failed (%s)", guard.describe())
    else:
        _say_once(
            checkpoint,
            "int8",
            "precision auto: int8 (the network cached in %s; %s)",
            cache_folder(checkpoint),
            guard.describe(),
        )
    return network is not None


def _say_once(checkpoint: Any, what: str, message: str, *args: Any) -> None:
    if (str(checkpoint), what) not in _SAID:
        _SAID.add((str(checkpoint), what))
        log.info(message, *args)


def _missing_packages() -> list[str]:
    import importlib.util

    return [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]


def require_int8_packages() -> None:
    """Raises UserError saying how to install openvino / nncf when either is missing."""
    missing = _missing_packages()
    if missing:
        raise UserError(f"precision int8 needs the {' and '.join(missing)} package(s); {INT8_INSTALL_HINT}")


def quantize(network: nn.Module, calibration: np.ndarray) -> Any:
    """``network`` (float, eval mode) followed by a softmax over classes, converted to OpenVINO with
    dynamic batch and window size and quantized to int8 by NNCF on the ``calibration`` windows
    ``(N, C, h, w)``; an ``openvino.Model`` whose output is class probabilities."""
    import copy

    import nncf
    import openvino as ov
    import torch

    network = copy.deepcopy(network).float().to("cpu", memory_format=torch.contiguous_format)
    network = torch.nn.Sequential(network, torch.nn.Softmax(dim=1)).eval()
    channels = calibration.shape[1]
    example = torch.from_numpy(calibration[:1])
    quiet = io.StringIO()  # NNCF draws progress bars on stdout; tracing warns about shape checks
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _nncf_log_level(logging.ERROR):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            model = ov.convert_model(network, example_input=example, input=[ov.PartialShape([-1, channels, -1, -1])])
        batches = [calibration[i : i + 1] for i in range(calibration.shape[0])]
        # Full bias correction rather than the fast one: the thin classes agree with the float labels
        # much better, for a little more build time (BENCHMARKS.md, int8).
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), fast_bias_correction=False)


@contextlib.contextmanager
def _nncf_log_level(level: int):
    logger = logging.getLogger("nncf")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def check(
    network: nn.Module, quantized: Int8Network, windows: np.ndarray, class_names: tuple[str, ...], batch: int = 8
) -> Guard:
    """The accuracy guard: labels (argmax) of ``quantized`` against those of the float32 ``network`` on
    ``windows``."""
    import torch

    from unet_patches.metrics import ConfusionMatrix

    from .tiling.network import resolve_device

    matrix = ConfusionMatrix(len(class_names))  # float labels as the truth
    network = network.eval()
    for start in range(0, windows.shape[0], batch):
        tensor = torch.from_numpy(windows[start : start + batch])
        with torch.inference_mode():
            reference = network(tensor.to(resolve_device(None, network))).argmax(1).cpu()
        matrix.update(quantized(tensor).argmax(1), reference)
    scores = matrix.summary(list(class_names))
    return Guard(scores["iou"], scores["pixel_accuracy"], int(windows.shape[0]))


def _stored_windows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from unet_patches.models.checkpoint import load_checkpoint

    windows = load_checkpoint(path).get("int8_windows")
    if not windows:
        raise UserError(
            f"{path}: holds no int8 calibration windows (written before int8 existed, or not by training); "
            f"add them with `unet-patches calibrate {path} -o NEW.pt`, or use --precision auto, bf16 or fp32"
        )
    return tuple(windows[k].float().numpy() for k in ("calibration", "held_back"))  # type: ignore[return-value]


def _digest(path: Path) -> str:
    """SHA-256 of the file, remembered per (path, size, modification time)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _sha256(path)
    return _DIGESTS[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cached_model(folder: Path, info: dict[str, Any], network: nn.Module, classes: int) -> Any:
    """The cached network of ``folder``, once its files match the digests of ``info.json`` and its
    input and output fit ``network`` (channels in, ``classes`` out).

    Raises:
        ValueError: a file altered, cut short or of another network, saying which.
    """
    import openvino as ov
    from torch import nn

    digests = info.get("files")
    for name in _MODEL_FILES:
        if not isinstance(digests, dict) or _sha256(folder / name) != digests.get(name):
            raise ValueError(f"{name} is not the file that was cached")
    try:
        model = ov.Core().read_model(folder / "model.xml")
        shape_in, shape_out = model.input(0).get_partial_shape(), model.output(0).get_partial_shape()
    except Exception as exc:  # OpenVINO raises its own errors for a model it cannot read
        raise ValueError(f"OpenVINO cannot read it: {one_line(exc, 120)}") from None
    first = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    channels = None if first is None else first.in_channels
    fits = shape_in.rank.get_length() == 4 and shape_out.rank.get_length() == 4
    if not fits or (channels is not None and shape_in[1] != channels) or shape_out[1] != classes:
        raise ValueError(f"a network of {shape_in} in and {shape_out} out, not {channels} channels in, {classes} out")
    return model


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / "info.json").read_text())
    except (OSError, ValueError):
        return None
    files_there = (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    valid = isinstance(info, dict) and {"checkpoint_sha256", "iou", "agreement", "windows"} <= set(info)
    return info if valid and (files_there or not info.get("passed", True)) else None


def _write_cache(folder: Path, model: Any, guard: Guard, digest: str) -> None:
    """The quantized network (if it passed) and its facts into ``folder``, whole: written into a temporary folder
    beside it, which then replaces it. Only a folder of ours (with an ``info.json``, or none) is
    replaced; an unwritable place leaves the network in memory only."""
    import openvino as ov

    if folder.exists() and not (folder / "info.json").is_file():
        log.warning("%s exists and is not an int8 cache; the int8 network is kept for this process only", folder)
        return
    info = {
        "format": CACHE_FORMAT,
        "checkpoint_sha256": digest,
        "openvino": ov.__version__,
        "passed": guard.passed,
        "iou": guard.iou,
        "agreement": guard.agreement,
        "windows": guard.windows,
        "min_iou": GUARD_MIN_IOU,
    }
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        log.warning(
            "cannot cache the int8 network beside the checkpoint (%s); kept for this process only", exc.strerror
        )
        return
    try:
        if guard.passed:  # a failed guard is cached as its figures only
            ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
            info["files"] = {name: _sha256(staging / name) for name in _MODEL_FILES}
        staging.chmod(0o755)  # mkdtemp makes it private
        (staging / "info.json").write_text(json.dumps(info, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        log.info("int8 network cached in %s", folder)
    except OSError as exc:
        log.warning("cannot cache the int8 network in %s (%s)", folder, one_line(exc, 120))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
