"""Device, precision policy and torch.distributed helpers shared by training and inference.

The precision names (:data:`PRECISIONS`) and the CPU's flags are read without torch, so the settings
and the torch-free inference path can use them; everything that needs torch imports it when called.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRECISIONS",
    "TRAINING_PRECISIONS",
    "Precision",
    "barrier",
    "cleanup_distributed",
    "cpu_flags",
    "cpu_has_fast_bf16",
    "cpu_has_int8_dot",
    "distributed_env",
    "init_distributed",
    "is_main_process",
    "keep_freed_memory",
    "pick_device",
    "rank",
    "resolve_precision",
    "world_size",
]

PRECISIONS: Registry[str] = Registry(
    "precision",
    {
        "auto": "fp16 on CUDA, bf16 on CPUs with native bf16 (AMX / AVX-512 BF16 / Arm BF16), else fp32; for "
        "inference int8 where the CPU has VNNI or AMX, an int8 network passed its guard and the job repays it",
        "fp32": "full float32",
        "bf16": "bfloat16 autocast (fast only with native bf16 hardware or on CUDA)",
        "fp16": "float16 autocast with a gradient scaler for training (CUDA only)",
        "int8": "inference only: the network quantized to int8 by OpenVINO + NNCF on the checkpoint's calibration "
        "windows, refused when its accuracy guard fails (CPU; the int8 extra)",
    },
)

TRAINING_PRECISIONS: Registry[str] = Registry(
    "training precision", {name: text for name, text in PRECISIONS.items() if name != "int8"}
)
"""The precisions training runs in: every one but ``int8``, which is for inference."""


def pick_device(name: str | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when present, else CPU."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: this machine has no CUDA device; use --device cpu")
    return device


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (``lscpu``'s Flags); empty where it
    cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bfloat16 matrix products in hardware (AMX or AVX512-BF16 on x86,
    BF16 on Arm).

    Without them (AVX2-only CPUs, e.g. AMD Zen 3) oneDNN emulates bfloat16 and PyTorch falls back to
    slow convolution kernels under bfloat16 autocast, several times slower than fp32.
    """
    flags = cpu_flags()
    if not flags:
        import torch

        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def cpu_has_int8_dot() -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI: ``avx512_vnni``, ``avx_vnni``; AMX:
    ``amx_int8``; ``asimddp`` on Arm), which is where int8 inference beats bf16 and fp32."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & cpu_flags())


@dataclass(frozen=True)
class Precision:
    """A resolved precision policy.

    ``dtype`` is the autocast dtype (None: full float32); ``channels_last`` says whether
    models and inputs should use the channels-last memory format; ``scaler`` whether fp16
    training needs a gradient scaler.
    """

    name: str
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def scaler(self) -> bool:
        import torch

        return self.dtype is torch.float16

    def autocast(self, device: torch.device):
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


@cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the system at
    once; once per process, on Linux with glibc (else nothing; returns whether it was set).

    A forward pass allocates its activations afresh (megabytes each). By default glibc returns such
    blocks to the system when freed (mmap'd blocks, and the heap top above 128 KiB), so every pass
    faults its pages in again. Blocks under 32 MiB come from the heap instead, and up to 128 MiB of
    free heap top is kept, which makes the passes of a large prediction markedly faster; training
    steps gain nothing, so only the tiled predictor sets it. The cost is up to 128 MiB kept after a job.

    Threads allocate from the one main arena: each decoding thread of tifffile and Zarr would
    otherwise get an arena of its own that keeps its freed memory too, raising the peak of wide images.
    glibc fixes the number of arenas when a thread first needs one, so this must run before any
    thread allocates (the inference commands call it first thing; later calls change nothing).
    BENCHMARKS.md (tiled inference, memory) has the figures.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    return (
        bool(libc.mallopt(m_trim_threshold, 128 << 20))
        and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
        and bool(libc.mallopt(m_arena_max, 1))
    )


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turn ``auto`` / ``fp32`` / ``bf16`` / ``fp16`` into a :class:`Precision` for ``device``.

    ``auto`` is fp16 on CUDA, bf16 on CPUs with native bf16 (AMX / AVX-512 BF16 / Arm BF16), and fp32
    otherwise. channels_last is used on CPU in every mode, because oneDNN convolutions are faster in
    that layout, and on CUDA under autocast.

    Raises:
        UserError: an unknown name, or fp16 without a CUDA device.
    """
    import torch

    PRECISIONS.check(name, "precision")
    cuda = device.type == "cuda"
    if name == "auto":
        name = "fp16" if cuda else ("bf16" if cpu_has_fast_bf16() else "fp32")
    if name == "int8":
        raise UserError(
            "precision 'int8' needs a checkpoint's int8 network (a PredictionJob with precision int8); "
            "use auto, fp32 or bf16"
        )
    if name == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA device; use auto, fp32 or bf16 on CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(name, dtype, channels_last=not cuda or dtype is not None)


# --- torch.distributed --------------------------------------------------------------------------


def distributed_env() -> bool:
    """True when started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun describes; return this rank's device."""
    import torch

    if not distributed_env() or torch.distributed.is_initialized():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend)
    return device


def rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    import torch

    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def cleanup_distributed() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
