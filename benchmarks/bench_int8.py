"""int8 inference (OpenVINO + NNCF, ``precision: int8``) against float on the same checkpoint.

Part 1, accuracy on held-out images (the demo's unseen test images by default): full-image mIoU with
fp32, with ``precision: auto``'s float choice (bf16 on native-bf16 CPUs) and with int8, and the share of
pixels whose int8 label equals the fp32 label. Targets (issue 14): agreement >= 99.5 %, mIoU within
0.003 of fp32.

Part 2, speed on one large synthetic image (``--size``, window ``auto``), interleaved repeats, best
kept: seconds per image for fp32, float auto and int8, their ratios, and the share of the int8 run spent
outside the network's passes (the engine's overhead).

Also: the one-off cost of building the int8 network (convert, calibrate, guard) and the guard's figures.

A checkpoint written before checkpoints kept int8 windows (the shipped ``checkpoints/demo``) is copied
with them added from its training data (``common.with_int8_windows``); nothing is written beside the
original.

    .venv/bin/python benchmarks/bench_int8.py                     # demo checkpoint, about 3 minutes
    .venv/bin/python benchmarks/bench_int8.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tiling import synthetic_image

from unet_patches.api import PredictionJob, Segmenter, evaluate_folder, predict
from unet_patches.data.folders import find_pairs
from unet_patches.data.imageio import read_image
from unet_patches.inference import int8 as quantizing
from unet_patches.models.checkpoint import load_checkpoint

from common import cpu_flags, machine, save_results, with_int8_windows

FLOATS = ("fp32", "float auto")


def prepared(checkpoint: str, folder: str | None, scratch: Path) -> Path:
    """``checkpoint`` itself when it keeps int8 windows, else a copy in ``scratch`` with them."""
    if load_checkpoint(checkpoint).get("int8_windows"):
        copy = scratch / Path(checkpoint).name
        copy.write_bytes(Path(checkpoint).read_bytes())  # the int8 cache goes beside the copy
        return copy
    return with_int8_windows(checkpoint, scratch / Path(checkpoint).name, folder)


def float_auto() -> str:
    from unet_patches.runtime import resolve_precision

    return resolve_precision("auto", torch.device("cpu")).name


def accuracy(segmenter: Segmenter, folder: str, limit: int | None) -> dict:
    pairs = find_pairs(folder)[:limit]
    rows: dict[str, dict] = {}
    same = total = 0
    for precision in ("fp32", float_auto(), "int8"):
        rows[precision] = evaluate_folder(segmenter, folder if limit is None else _subset(pairs), precision=precision)
    for pair in pairs:
        image = read_image(pair.image)
        a = predict(segmenter, image, precision="fp32")
        b = predict(segmenter, image, precision="int8")
        same += int((a == b).sum())
        total += a.size
    return {
        "images": len(pairs),
        "miou": {k: v["miou"] for k, v in rows.items()},
        "iou": {k: v["iou"] for k, v in rows.items()},
        "agreement_int8_fp32": same / total,
    }


def _subset(pairs: list) -> str:
    """A folder of the first pairs only (links), for --quick."""
    root = Path(tempfile.mkdtemp(prefix="int8-subset-"))
    for part in ("images", "masks"):
        (root / part).mkdir()
    for pair in pairs:
        (root / "images" / pair.image.name).symlink_to(pair.image.resolve())
        (root / "masks" / pair.mask.name).symlink_to(pair.mask.resolve())
    return str(root)


def speed(segmenter: Segmenter, size: int, repeats: int) -> dict:
    raw, _ = synthetic_image(size, seed=7)
    precisions = ("fp32", float_auto(), "int8")
    jobs = {p: PredictionJob(segmenter, [raw.shape], precision=p, compile=False) for p in precisions}
    predictors = {p: job.predictor(raw.shape) for p, job in jobs.items()}
    for job in jobs.values():  # warm-up: oneDNN's caches, OpenVINO's first call
        job.labels(raw[:512, :512])
    best: dict[str, float] = {}
    inside: dict[str, float] = {}
    for _ in range(repeats):
        for precision, predictor in predictors.items():
            passes: list[float] = []
            inner = predictor.run_network

            def timed(batch, inner=inner, passes=passes):
                start = time.perf_counter()
                out = inner(batch)
                passes.append(time.perf_counter() - start)
                return out

            predictor.run_network = timed
            start = time.perf_counter()
            jobs[precision].labels(raw)
            wall = time.perf_counter() - start
            del predictor.run_network
            if wall < best.get(precision, float("inf")):
                best[precision], inside[precision] = wall, sum(passes)
            print(f"  {precision}: {wall:.2f} s (passes {sum(passes):.2f} s)", file=sys.stderr, flush=True)
    return {
        "size": size,
        "window": list(predictors["int8"].window),
        "seconds": best,
        "overhead": {p: 1 - inside[p] / best[p] for p in best},
        "int8_vs": {p: best[p] / best["int8"] for p in best if p != "int8"},
    }


def markdown(report: dict) -> str:
    a, s, b = report["accuracy"], report["speed"], report["build"]
    auto = report["float_auto"]
    lines = [
        f"CPU: {report['machine']['cpu']}, flags {', '.join(report['machine']['cpu_flags'])}; "
        f"checkpoint {report['checkpoint']}; float auto = {auto}",
        "",
        f"int8 build (convert + calibrate on {b['calibration']} windows + guard): {b['seconds']:.1f} s; "
        f"guard {'passed' if b['passed'] else 'FAILED'}: {b['guard']}",
        "",
        f"Accuracy on {a['images']} held-out images (full-image, window auto):",
        "",
        "| precision | mIoU | " + " | ".join(f"IoU {name}" for name in a["iou"]["fp32"]) + " |",
        "|---|---|" + "---|" * len(a["iou"]["fp32"]),
    ]
    for precision, value in a["miou"].items():
        ious = " | ".join(f"{v:.4f}" for v in a["iou"][precision].values())
        lines.append(f"| {precision} | {value:.4f} | {ious} |")
    lines += [
        "",
        f"int8 labels equal to fp32's: {100 * a['agreement_int8_fp32']:.3f} % of pixels; "
        f"mIoU int8 - fp32: {a['miou']['int8'] - a['miou']['fp32']:+.4f}",
        "",
        f"Speed on a {s['size']}x{s['size']} image (windows {s['window'][0]}x{s['window'][1]}), best of "
        f"{report['repeats']}:",
        "",
        "| precision | s per image | int8 is x faster | time outside the passes (percentile normalisation included) |",
        "|---|---|---|---|",
    ]
    for precision, seconds in s["seconds"].items():
        ratio = f"{s['int8_vs'][precision]:.2f}" if precision in s["int8_vs"] else "-"
        lines.append(f"| {precision} | {seconds:.2f} | {ratio} | {100 * s['overhead'][precision]:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo/best.pt")
    parser.add_argument("--train-folder", help="training data of a checkpoint without int8 windows")
    parser.add_argument("--test", default="data/demo/synthetic/test", help="held-out images/ + masks/")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 test images, 1024 px, one repeat")
    args = parser.parse_args()
    limit = 10 if args.quick else None
    size, repeats = (1024, 1) if args.quick else (args.size, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        checkpoint = prepared(args.checkpoint, args.train_folder, Path(scratch))
        segmenter = Segmenter.from_checkpoint(checkpoint)
        start = time.perf_counter()
        network, guard = quantizing.int8_network(checkpoint, segmenter.network, segmenter.class_names)
        build = {
            "seconds": time.perf_counter() - start,
            "passed": guard.passed,
            "guard": guard.describe(),
            "calibration": int(load_checkpoint(checkpoint)["int8_windows"]["calibration"].shape[0]),
        }
        if network is None:
            print(f"int8 refused by the guard: {guard.describe()}", file=sys.stderr)
            sys.exit(1)
        report = {
            "checkpoint": args.checkpoint,
            "machine": machine(),
            "cpu_flags": cpu_flags(),
            "float_auto": float_auto(),
            "repeats": repeats,
            "build": build,
            "accuracy": accuracy(segmenter, args.test, limit),
            "speed": speed(segmenter, size, repeats),
        }
    text = markdown(report)
    print(text)
    save_results("int8", report, text)


if __name__ == "__main__":
    main()
