"""Small helpers shared by the benchmarks: timers, peak memory, machine description (torch is imported
only by the functions that use it, so a benchmark's torch-free child process can use the rest)."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class Timing:
    wall: float  # seconds of wall-clock time
    cpu: float  # seconds of CPU time of this process (all threads)


class Timer:
    """``with Timer() as t: ...`` then ``t.result`` holds wall and process CPU seconds."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def matmul_gflops(dtype: Any, size: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size``-cube matrix product in ``dtype`` (a torch dtype)."""
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def conv1x1_gflops(dtype: Any, channels: int = 512, size: int = 32, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a 1x1 convolution (``channels`` in and out, batch 8 of
    ``size``-square maps) in ``dtype`` under autocast: the fp32 peak through oneDNN, which
    ``torch.mm`` in fp32 does not reach on some AMD CPUs. Wide and small, so that it is bound by
    arithmetic, not memory (256 channels at 128x128 measured 40 % lower on an AMX Xeon)."""
    import torch

    conv = torch.nn.Conv2d(channels, channels, 1, bias=False).eval()
    x = torch.randn(8, channels, size, size).contiguous(memory_format=torch.channels_last)
    conv = conv.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    best = float("inf")
    with torch.inference_mode(), autocast:
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return 2 * channels * channels * 8 * size * size / best / 1e9


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The matrix-relevant flags of this CPU (``lscpu``'s ``Flags``, as ``runtime.cpu_flags`` reads them)."""
    from unet_patches.runtime import cpu_flags as all_flags

    return [flag for flag in CPU_FLAGS if flag in all_flags()]


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import torch

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average": os.getloadavg(),
        "matmul_gflops_fp32": round(matmul_gflops(torch.float32, 2048), 1),
        "matmul_gflops_bf16": round(matmul_gflops(torch.bfloat16, 512, repeats=1), 2),
        "cpu_flags": cpu_flags(),
    }


def save_results(name: str, report: dict, text: str) -> Path:
    """Write ``report`` (JSON) and ``text`` (markdown) to ``benchmarks/results/<name>-<time>.*``;
    returns the JSON path."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"{name}-{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    (results / f"{name}-{stamp}.md").write_text(text + "\n")
    return results / f"{name}-{stamp}.json"


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakSampler:
    """Peak resident memory above the starting level while the block runs, sampled every ``period`` s.

    ``with PeakSampler() as p: ...`` then ``p.peak_mb`` (above the level at entry). Used to compare
    the memory of two runs in one process, where VmHWM only ever grows.
    """

    def __init__(self, period: float = 0.01) -> None:
        self.period = period

    def __enter__(self) -> PeakSampler:
        import gc
        import threading

        # Hand memory freed by earlier runs back to the system first, so that this run's growth
        # shows instead of being absorbed by the allocator's free lists.
        gc.collect()
        _malloc_trim()
        self._start = current_rss_mb()
        self._peak = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.period):
                self._peak = max(self._peak, current_rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, current_rss_mb())
        self.peak_mb = self._peak - self._start


def with_int8_windows(checkpoint: str | Path, out: str | Path, folder: str | Path | None = None) -> Path:
    """A copy of ``checkpoint`` (written before checkpoints kept int8 windows) with the int8
    calibration and held-back windows training now stores, as ``unet-patches calibrate`` writes it
    (from ``folder``, default the run's ``training.folder``); returns ``out``."""
    from unet_patches.deploy.calibrate import add_int8_windows

    add_int8_windows(checkpoint, out, folder, overwrite=True)
    return Path(out)
