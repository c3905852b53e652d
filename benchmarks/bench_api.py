"""The Python API's cost per call: ``predict(segmenter, image)`` (a prediction job of its own, which
prepares its copy of the network every call) against ``PredictionJob.labels(image)`` on one job (the
copy prepared once), on the same image and network, interleaved call by call in one process.

Run from the repository root:
    .venv/bin/python benchmarks/bench_api.py                 # the demo U-Net of tests/data, 400 x 200, 30 calls
    .venv/bin/python benchmarks/bench_api.py --quick         # 10 calls
Results: a markdown table on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from unet_patches.api import PredictionJob, Segmenter, predict

from common import cpu_flags, machine, save_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "tests" / "data" / "demo_unet_w8.pt"))
    parser.add_argument("--size", type=int, nargs=2, default=(400, 200), metavar=("H", "W"))
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--quick", action="store_true", help="10 calls")
    args = parser.parse_args(argv)
    calls = 10 if args.quick else args.calls
    segmenter = Segmenter.from_checkpoint(args.checkpoint)
    image = (np.random.default_rng(0).random(tuple(args.size)) * 255).astype(np.uint8)
    job = PredictionJob(segmenter, precision=args.precision, compile=False)
    runs = {
        "predict() per call (a job each)": lambda: predict(segmenter, image, precision=args.precision),
        "PredictionJob.labels() per call (one job)": lambda: job.labels(image),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(calls):  # interleaved, so that both see the same load
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    base = medians["PredictionJob.labels() per call (one job)"]
    lines = [
        f"# The API's cost per call ({calls} calls each, interleaved)",
        f"{machine()['cpu']}, CPU flags {' '.join(cpu_flags())}; {Path(args.checkpoint).name}, "
        f"{args.size[0]} x {args.size[1]} image, precision {args.precision}.",
        "",
        "| call | median ms | min ms | / one job |",
        "|---|---:|---:|---:|",
    ]
    for name, median in medians.items():
        lines.append(f"| {name} | {1000 * median:.1f} | {1000 * min(times[name]):.1f} | {median / base:.2f} |")
    text = "\n".join(lines)
    print(text)
    report = {"machine": machine(), "calls": calls, "size": list(args.size), "medians_s": medians}
    print(f"wrote {save_results('api', report, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
