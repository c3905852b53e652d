"""Calibrated probabilities and uncertainty maps, measured.

Part ``quality``: for each model and testbed, a temperature is fitted on one labelled set (``--fit``
images of the testbed, a seed of their own) and the test set (``--test`` images, another seed) is
scored before and after: ECE (15 bins), NLL, Brier, over every pixel; and whether the review order
finds the worst images: the Spearman correlation, over the test images, between an image's mean
uncertainty (normalised entropy of the calibrated probabilities) and its error (1 - pixel accuracy).

Part ``cost``: ``predict CKPT IMAGE -o OUT --precision fp32`` against the same with ``--uncertainty`` on a
2048^2 and a 16384^2 tiled, compressed TIFF: wall time and peak memory of each (fresh processes, one at a
time; the precision pinned so that neither run builds an int8 network).

Run from the repository root (nothing else running):
    .venv/bin/python benchmarks/bench_calibration.py
    .venv/bin/python benchmarks/bench_calibration.py --parts quality \
        --model nuclei=/tmp/bq/runs/nuclei-hard-0-planned/checkpoints/run/best.pt:nuclei-hard
    .venv/bin/python benchmarks/bench_calibration.py --quick            # plumbing only
Results: markdown on stdout, JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

from bench_quality import make_testbed
from bench_sharding import timed, write_tiled

from common import cpu_flags, machine, save_results

DEMO_MODEL = REPO / "tests" / "data" / "demo_unet_w8.pt"


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values))
    for value in np.unique(values):
        same = values == value
        ranked[same] = ranked[same].mean()
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_per_class(log_probs: np.ndarray, target: np.ndarray, sweeps: int = 8) -> np.ndarray:
    """Per-class inverse temperatures ``beta`` minimising the NLL of ``softmax(beta * log p)`` (convex in
    ``beta``): coordinate bisection on each partial derivative, ``sweeps`` times over the classes."""
    z = log_probs.astype(np.float64)
    beta = np.ones(z.shape[1])
    rows = np.arange(target.size)

    def slope(k: int, value: float) -> float:
        b = beta.copy()
        b[k] = value
        scaled = z * b
        scaled -= scaled.max(1, keepdims=True)
        q = np.exp(scaled)
        q /= q.sum(1, keepdims=True)
        return float((q[:, k] * z[:, k]).mean() - (z[rows, k] * (target == k)).mean())

    for _ in range(sweeps):
        for k in range(z.shape[1]):
            low, high = np.log(0.05), np.log(20.0)
            for _ in range(40):
                middle = (low + high) / 2
                if slope(k, float(np.exp(middle))) < 0:
                    low = middle
                else:
                    high = middle
            beta[k] = float(np.exp((low + high) / 2))
    return beta


def per_class_softmax(probs: np.ndarray, beta: np.ndarray) -> np.ndarray:
    scaled = np.log(np.maximum(probs, 1e-12)) * beta[:, None, None]
    scaled -= scaled.max(0, keepdims=True)
    q = np.exp(scaled)
    return q / q.sum(0, keepdims=True)


def quality(name: str, checkpoint: Path, testbed: str, root: Path, n_fit: int, n_test: int) -> dict:
    from unet_patches.api import Segmenter, evaluate_folder, predict
    from unet_patches.data.folders import find_pairs, read_pair
    from unet_patches.deploy.calibrate import fit_folder_temperature
    from unet_patches.metrics.calibration import CalibrationCounts, PixelSample, apply_temperature
    from unet_patches.metrics.uncertainty import normalised_entropy

    folder, _ = make_testbed(testbed, root / "data", 900, n_fit, n_test)  # train/: the fit set; test/
    options = {"precision": "fp32", "compile": False}
    segmenter = replace(Segmenter.from_checkpoint(checkpoint), temperature=1.0)
    before = evaluate_folder(segmenter, folder / "test", calibration=True, **options)
    record = fit_folder_temperature(checkpoint, folder / "train", dict(options))
    temperature = record["temperature"]
    calibrated = replace(segmenter, temperature=temperature)
    after = evaluate_folder(calibrated, folder / "test", calibration=True, **options)
    sample = PixelSample(segmenter.num_classes, limit=200_000)
    for pair in find_pairs(folder / "train"):  # per-class temperatures, for comparison (not offered)
        raw, mask = read_pair(pair, segmenter.preprocess)
        sample.update(predict(segmenter, raw, return_probs=True, **options)[1], mask)
    beta = fit_per_class(*sample.arrays())
    per_class, changed, pixels = CalibrationCounts(segmenter.num_classes), 0, 0
    uncertainty, error = [], []
    for pair in find_pairs(folder / "test"):
        raw, mask = read_pair(pair, segmenter.preprocess)
        labels, probs = predict(segmenter, raw, return_probs=True, **options)
        uncertainty.append(float(normalised_entropy(apply_temperature(probs, temperature)).mean()))
        error.append(float((labels != mask).mean()))
        vector = per_class_softmax(probs, beta)
        per_class.update(vector, mask)
        changed += int((vector.argmax(0) != labels).sum())
        pixels += labels.size
    return {
        "model": name,
        "checkpoint": str(checkpoint),
        "testbed": testbed,
        "fit_images": n_fit,
        "test_images": n_test,
        "temperature": temperature,
        "miou": after["miou"],
        "before": {k: before[f"{k}_uncalibrated"] for k in ("ece", "nll", "brier")},
        "after": {k: after[k] for k in ("ece", "nll", "brier")},
        "ece_per_class_before": before["ece_per_class_uncalibrated"],
        "ece_per_class_after": after["ece_per_class"],
        "spearman_uncertainty_error": spearman(np.array(uncertainty), np.array(error)),
        "per_class_temperatures": (1 / beta).tolist(),
        "per_class_after": {"ece": per_class.ece(), "nll": per_class.nll(), "brier": per_class.brier()},
        "per_class_labels_changed": changed / pixels,
        "per_image": {"mean_uncertainty": uncertainty, "error": error},
    }


def cost(checkpoint: Path, work: Path, sizes: list[int]) -> dict:
    rows = {}
    checkpoint = Path(shutil.copy(checkpoint, work / "model.pt"))  # an int8 cache, if built, goes beside the copy
    for size in sizes:
        image = work / f"cost_{size}.tif"
        write_tiled(image, size, 13)
        for label, flags in (("predict", []), ("predict --uncertainty", ["--uncertainty"])):
            out = work / f"cost_{size}_{len(flags)}"
            # Precision pinned: under auto the first 16384^2 run would build an int8 network (and time it).
            args = [
                "predict",
                str(checkpoint),
                str(image),
                "-o",
                str(out),
                "--no-progress",
                "--precision",
                "fp32",
                *flags,
            ]
            wall, peaks = timed([(args, None)])
            rows[f"{label} {size}"] = {"size": size, "command": label, "wall_s": wall, "peak_mb": peaks[0]}
            shutil.rmtree(out)
        image.unlink()
        plain, extra = rows[f"predict {size}"], rows[f"predict --uncertainty {size}"]
        extra["time_ratio"] = extra["wall_s"] / plain["wall_s"]
        extra["memory_ratio"] = extra["peak_mb"] / plain["peak_mb"]
    return rows


def report(results: dict) -> str:
    info = results["machine"]
    lines = [f"# Calibration and uncertainty ({info['cpu']}; CPU flags {' '.join(cpu_flags())})", ""]
    if results.get("quality"):
        lines += [
            "| model | testbed | T | ECE before -> after | NLL before -> after | Brier before -> after | "
            "Spearman(uncertainty, error) | mIoU | per-class T: ECE, NLL, labels changed |",
            "|---|---|---:|---|---|---|---:|---:|---|",
        ]
        for row in results["quality"]:
            b, a = row["before"], row["after"]
            lines.append(
                f"| {row['model']} | {row['testbed']} | {row['temperature']:.3f} | {b['ece']:.4f} -> {a['ece']:.4f} | "
                f"{b['nll']:.4f} -> {a['nll']:.4f} | {b['brier']:.4f} -> {a['brier']:.4f} | "
                f"{row['spearman_uncertainty_error']:.3f} | {row['miou']:.4f} | "
                f"{row['per_class_after']['ece']:.4f}, {row['per_class_after']['nll']:.4f}, "
                f"{100 * row['per_class_labels_changed']:.2f} % |"
            )
        lines.append("")
    if results.get("cost"):
        lines += [
            "| image | command | wall s | peak MiB | time ratio | memory ratio |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in results["cost"].values():
            ratios = f"{row['time_ratio']:.3f} | {row['memory_ratio']:.3f}" if "time_ratio" in row else " | "
            lines.append(
                f"| {row['size']}^2 | `{row['command']}` | {row['wall_s']:.1f} | {row['peak_mb']:.0f} | {ratios} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("quality", "cost"), default=["quality", "cost"])
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=CKPT:TESTBED",
        help="a model to calibrate and the testbed it was trained for (default: the demo model on shapes)",
    )
    parser.add_argument("--fit", type=int, default=10, help="labelled images the temperature is fitted on")
    parser.add_argument("--test", type=int, default=20, help="test images scored before and after")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--root", help="working folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="3 fit and 3 test images, 512^2 and 1024^2: plumbing only")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-calibration-"))
    root.mkdir(parents=True, exist_ok=True)
    n_fit, n_test, sizes = (3, 3, [512, 1024]) if args.quick else (args.fit, args.test, args.sizes)
    models = []
    for spec in args.model or [f"demo={DEMO_MODEL}:shapes"]:
        name, rest = spec.split("=", 1)
        checkpoint, testbed = rest.rsplit(":", 1)
        models.append((name, Path(checkpoint), testbed))
    results: dict = {"machine": machine()}
    if "quality" in args.parts:
        results["quality"] = []
        for name, checkpoint, testbed in models:
            print(f"quality: {name} on {testbed} ...", flush=True)
            results["quality"].append(quality(name, checkpoint, testbed, root, n_fit, n_test))
    if "cost" in args.parts:
        print(f"cost: predict with and without --uncertainty at {sizes} ...", flush=True)
        results["cost"] = cost(models[0][1], root, sizes)
    text = report(results)
    print(text)
    print(f"wrote {save_results('calibration', results, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
