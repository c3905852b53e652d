"""Percentile normalisation of a large image streamed from disk: extra time and peak memory against
``range`` normalisation (no statistics), on the same file, through ``api.predict_files``.

A uint16 TIFF of ``--size`` x ``--size`` pixels is predicted by a cheap network (one 1x1 convolution,
so the engine and the reads dominate) with ``stream_threshold_px=0`` (read band by band). Each run is
its own process so its peak RSS is its own. Also checked: the streamed percentiles equal those of the
image in memory (``Preprocess.bounds`` on the whole array).

    .venv/bin/python benchmarks/bench_normalize_stream.py            # 8192 x 8192 (128 MiB file)
    .venv/bin/python benchmarks/bench_normalize_stream.py --quick    # 2048 x 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from common import machine, peak_rss_mb


def child(path: Path, mode: str, out: Path) -> None:
    import torch

    from unet_patches.api import Segmenter, predict_files
    from unet_patches.data.preprocess import Preprocess

    network = torch.nn.Conv2d(1, 3, 1)
    segmenter = Segmenter(network, 256, ("a", "b", "c"), Preprocess(num_classes=3, normalize=mode))
    start = time.perf_counter()
    predict_files(
        segmenter, path, out, overlay=False, overwrite=True, stream_threshold_px=0, progress=False,
        window=512, overlap=0.0, precision="fp32",
    )  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return 0
    import tifffile

    from unet_patches.data.imageio import read_image
    from unet_patches.data.preprocess import Preprocess
    from unet_patches.files.sources import NormalizedSource, TiffSource

    size = 2048 if args.quick else args.size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.tif"
        rng = np.random.default_rng(0)
        image = (rng.random((size, size), dtype=np.float32) * 3000).astype(np.uint16)
        tifffile.imwrite(path, image)
        del image
        pre = Preprocess(num_classes=3, normalize="percentile")
        with TiffSource(path, 1) as source:
            streamed = NormalizedSource(source, pre).bounds
        whole = pre.bounds(lambda: [pre.scaled(read_image(path))])
        for repeat in range(args.repeats):
            for mode in ("range", "percentile"):
                command = [sys.executable, __file__, "--child", str(path), mode, str(Path(tmp) / mode)]
                result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
                rows.append({"mode": mode, "repeat": repeat, **result})
    best = {m: min(r["seconds"] for r in rows if r["mode"] == m) for m in ("range", "percentile")}
    peak = {m: max(r["peak_rss_mb"] for r in rows if r["mode"] == m) for m in ("range", "percentile")}
    file_mb = size * size * 2 / 2**20
    text = "\n".join([
        f"{size} x {size} uint16 TIFF ({file_mb:.0f} MiB), streamed; best of {args.repeats}:",
        "",
        "| data.normalize | seconds | peak RSS MiB |",
        "|---|---:|---:|",
        *(f"| {m} | {best[m]:.2f} | {peak[m]:.0f} |" for m in best),
        "",
        f"percentile / range time: {best['percentile'] / best['range']:.2f}x; streamed bounds "
        f"({streamed[0]:.6g}, {streamed[1]:.6g}) {'==' if streamed == whole else '!='} in-memory bounds "
        f"({whole[0]:.6g}, {whole[1]:.6g})",
    ])  # fmt: skip
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "normalize_stream" + ("_quick" if args.quick else "")
    (out / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    (out / f"{name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
