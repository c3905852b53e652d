"""Deployment of an ONNX export: ONNX Runtime in the torch-free ``WindowBlender`` against the torch
engine (``TiledPredictor``, fp32 and ``precision: auto``) on the same image and windows, and the
``predict`` command where torch cannot be imported against the same command with torch.

The network is the demo's U-Net (base width 8, depth 4) with seeded random weights; the image a
synthetic ``--size`` x ``--size`` one; window 96, overlap 0.5, batch 32. In-process rows are timed
interleaved, best of ``--repeats``; labels are compared with torch fp32's. The command rows run
``unet-patches predict`` in a fresh interpreter each (wall time and peak RSS of that process); the
torch-free one blocks ``import torch`` as an environment without torch would fail it.

    .venv/bin/python benchmarks/bench_deploy.py            # 2048 x 2048
    .venv/bin/python benchmarks/bench_deploy.py --quick    # 512 x 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from common import peak_rss_mb

BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
"""


def child(mode: str, argv: list[str]) -> None:
    """``unet-patches ARGV`` in this process (torch blocked when ``mode`` is ``no-torch``); prints the
    seconds from interpreter start-up work to the end and the peak RSS as the last line."""
    start = time.perf_counter()
    if mode == "no-torch":
        exec(BLOCK_TORCH)
    from unet_patches.cli import main

    code = main(argv)
    assert code == 0 and (mode == "torch" or "torch" not in sys.modules)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def setup(root: Path, size: int) -> tuple[Path, Path]:
    """A checkpoint of the demo's U-Net shape, its two ONNX exports and one synthetic image."""
    import torch

    from unet_patches.data.preprocess import Preprocess
    from unet_patches.data.synthetic import SyntheticSpec, generate_dataset
    from unet_patches.deploy.export import export_checkpoint
    from unet_patches.models import ModelConfig, build_model
    from unet_patches.models.checkpoint import save_checkpoint

    config = ModelConfig(name="unet", base_width=8, depth=4)
    torch.manual_seed(0)
    state = {
        "format_version": 1,
        "model_config": config.to_dict(),
        "model": build_model(config, pretrained=False).state_dict(),
        "class_names": ["background", "line", "ellipse"],
        "in_channels": 1,
        "patch_size": 96,
        "preprocess": Preprocess(in_channels=1, num_classes=3).to_dict(),
    }
    save_checkpoint(state, root / "best.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for output in ("probabilities", "logits"):
            export_checkpoint(root / "best.pt", root / f"{output}.onnx", "onnx", output=output)
    generate_dataset(root / "data", n_train=0, n_test=1, seed=0, spec=SyntheticSpec(height=size, width=size))
    return root / "best.pt", root / "data" / "test" / "images" / "0000.png"


def engines(root: Path, image_path: Path, repeats: int) -> list[dict]:
    import numpy as np

    from unet_patches.api import PredictionJob, Segmenter
    from unet_patches.data.imageio import read_image

    raw = read_image(image_path)
    checkpoint = Segmenter.from_checkpoint(root / "best.pt")
    runs = {
        "torch fp32 (TiledPredictor)": (checkpoint, {"precision": "fp32"}),
        "torch auto (TiledPredictor)": (checkpoint, {"precision": "auto"}),
        "ONNX Runtime, probabilities export (WindowBlender)": (Segmenter.from_checkpoint(root / "probabilities.onnx"), {}),
        "ONNX Runtime, logits export + NumPy softmax": (Segmenter.from_checkpoint(root / "logits.onnx"), {}),
    }  # fmt: skip
    jobs = {
        name: PredictionJob(seg, window=96, overlap=0.5, batch_size=32, compile=False, **opts)
        for name, (seg, opts) in runs.items()
    }
    labels, best = {}, {name: float("inf") for name in runs}
    for name, job in jobs.items():  # warm-up (oneDNN kernels, ORT session)
        labels[name] = job.labels(raw)
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job.labels(raw)
            best[name] = min(best[name], time.perf_counter() - start)
    reference = labels["torch fp32 (TiledPredictor)"]
    base = best["torch fp32 (TiledPredictor)"]
    return [
        {
            "engine": name,
            "seconds": best[name],
            "x_torch_fp32": base / best[name],
            "labels_equal_torch_fp32_pct": 100.0 * float(np.mean(labels[name] == reference)),
        }
        for name in runs
    ]


def commands(root: Path, image_path: Path, repeats: int) -> list[dict]:
    rows = []
    for repeat in range(repeats):
        for mode in ("torch", "no-torch"):
            out = root / f"out_{mode}_{repeat}"
            argv = ["predict", str(root / "probabilities.onnx"), str(image_path), "-o", str(out), "--no-progress"]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--child", mode, *argv], capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                raise SystemExit(f"{mode} child failed:\n{done.stderr}")
            rows.append({"mode": mode, "repeat": repeat, "wall": wall, **json.loads(done.stdout.splitlines()[-1])})
    same = all(
        (root / "out_torch_0" / p.name).read_bytes() == p.read_bytes() for p in (root / "out_no-torch_0").iterdir()
    )
    for row in rows:
        row["outputs_identical"] = same
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return 0
    from common import machine

    size = 512 if args.quick else args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, image_path = setup(root, size)
        engine_rows = engines(root, image_path, args.repeats)
        command_rows = commands(root, image_path, args.repeats)
    best = {m: min((r for r in command_rows if r["mode"] == m), key=lambda r: r["wall"]) for m in ("torch", "no-torch")}
    text = "\n".join([
        f"{size} x {size} synthetic image, U-Net width 8 depth 4, window 96, overlap 0.5, batch 32; best of {args.repeats}:",
        "",
        "| engine | seconds | x torch fp32 | labels = torch fp32 |",
        "|---|---:|---:|---:|",
        *(f"| {r['engine']} | {r['seconds']:.3f} | {r['x_torch_fp32']:.2f} | {r['labels_equal_torch_fp32_pct']:.4f} % |"
          for r in engine_rows),
        "",
        "| `unet-patches predict probabilities.onnx` | wall s (process) | peak RSS MiB |",
        "|---|---:|---:|",
        *(f"| {m} | {best[m]['wall']:.2f} | {best[m]['peak_rss_mb']:.0f} |" for m in best),
        "",
        f"outputs identical with and without torch: {command_rows[0]['outputs_identical']}",
    ])  # fmt: skip
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "deploy" + ("_quick" if args.quick else "")
    record = {"machine": machine(), "engines": engine_rows, "commands": command_rows}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"{name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
