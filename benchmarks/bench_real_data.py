"""Real-looking data: which ``data.normalize`` trains best, and whether strong augmentation helps a
small set.

Part A (normalisation): the same synthetic shapes stored three ways, trained with each of
  ``range``, ``percentile`` and ``dataset`` normalisation (everything else the default settings, the
  same seed), scored by full-image mIoU on the unseen test images of the same storage:
  - ``8-bit``: the synthetic set as the generator writes it (uint8 PNG, 0-255);
  - ``16-bit 0-3000``: the same images as uint16 using 0-3000 of 0-65535 (a scan that uses a small
    part of its range);
  - ``16-bit, exposure varies``: uint16, each image with its own offset (200-2000) and gain (white at
    1500-12000 above the offset), as images of one set taken with different exposure.
Part B (augmentation, ``--augment``): 10 training images; ``augment.preset`` ``flips`` against
  ``strong``, each scored on 50 unseen test images, over ``--seeds`` training seeds.

Run from the repository root:
    .venv/bin/python benchmarks/bench_real_data.py                    # part A, ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_real_data.py --quick            # tiny: checks the plumbing only
    .venv/bin/python benchmarks/bench_real_data.py --skip-normalize --augment
Results: markdown tables on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from unet_patches.api import Segmenter, evaluate_folder
from unet_patches.data.imageio import read_image, write_png
from unet_patches.data.synthetic import generate_dataset
from unet_patches.training import run as training
from unet_patches.training.config import default_config

from common import machine

MODES = ("range", "percentile", "dataset")


def make_sets(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Path]:
    """The three storages of one synthetic set (same shapes, same seed)."""
    sets = {"8-bit": root / "u8", "16-bit 0-3000": root / "u16_3000", "16-bit, exposure varies": root / "u16_vary"}
    generate_dataset(sets["8-bit"], n_train=n_train, n_test=n_test, seed=seed)
    generate_dataset(sets["16-bit 0-3000"], n_train=n_train, n_test=n_test, seed=seed, bit_depth=16, max_value=3000)
    rng = np.random.default_rng(99)
    for split in ("train", "test"):
        for path in sorted((sets["8-bit"] / split / "images").glob("*.png")):
            offset, gain = rng.uniform(200, 2000), rng.uniform(1500, 12000)
            values = offset + read_image(path).astype(np.float64) / 255.0 * gain
            target = sets["16-bit, exposure varies"] / split
            write_png(target / "images" / path.name, np.round(values).astype(np.uint16))
            mask = path.parent.parent / "masks" / path.name
            (target / "masks").mkdir(parents=True, exist_ok=True)
            (target / "masks" / path.name).write_bytes(mask.read_bytes())
    return sets


def train_and_score(folder: Path, work: Path, name: str, overrides: dict, test: Path) -> dict:
    """Train with the default settings plus ``overrides``; full-image test mIoU of the best checkpoint."""
    settings = {
        "training": {
            "folder": str(folder / "train"),
            "checkpoint_dir": str(work / "ck"),
            "log_dir": str(work / "runs"),
            "run_name": name,
            "log_images_every": 0,
            **overrides.get("training", {}),
        },
        **{k: v for k, v in overrides.items() if k != "training"},
    }
    config = default_config().merged(settings)
    start = time.perf_counter()
    summary = training.fit(config, overwrite=True, progress_bars=False)
    seconds = time.perf_counter() - start
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    scores = evaluate_folder(segmenter, test, **config.inference.predictor_options())
    return {"miou": scores["miou"], "val_miou": summary["best_val_miou"], "seconds": seconds}


def part_normalize(args: argparse.Namespace, work: Path) -> list[dict]:
    sets = make_sets(work / "data", args.images, args.test_images)
    rows = []
    for label, folder in sets.items():
        for mode in MODES:
            name = f"{folder.name}_{mode}"
            overrides = {
                "data": {"normalize": mode},
                "training": {"epochs": args.epochs, "samples_per_epoch": args.samples},
            }
            result = train_and_score(folder, work, name, overrides, folder / "test")
            rows.append({"data": label, "normalize": mode, **result})
            print(f"  {label:26s} {mode:10s} test mIoU {result['miou']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return rows


def part_augment(args: argparse.Namespace, work: Path) -> list[dict]:
    folder = work / "small"
    generate_dataset(folder, n_train=10, n_test=50, seed=5)
    rows = []
    for seed in range(args.seeds):
        for preset in ("flips", "strong"):
            overrides = {
                "augment": {"preset": preset},
                "training": {"epochs": args.epochs, "samples_per_epoch": args.samples, "seed": seed},
            }
            result = train_and_score(folder, work, f"small_{preset}_{seed}", overrides, folder / "test")
            rows.append({"preset": preset, "seed": seed, **result})
            print(f"  seed {seed} {preset:7s} test mIoU {result['miou']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return rows


def normalize_table(rows: list[dict]) -> str:
    lines = ["| data | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for label in dict.fromkeys(r["data"] for r in rows):
        cells = [f"{next(r['miou'] for r in rows if r['data'] == label and r['normalize'] == m):.4f}" for m in MODES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def augment_table(rows: list[dict]) -> str:
    lines = ["| preset | test mIoU per seed | mean |", "|---|---|---|"]
    for preset in ("flips", "strong"):
        values = [r["miou"] for r in rows if r["preset"] == preset]
        lines.append(f"| {preset} | {', '.join(f'{v:.4f}' for v in values)} | {np.mean(values):.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sets and runs: checks the plumbing only")
    parser.add_argument("--images", type=int, default=40, help="training images per storage (part A)")
    parser.add_argument("--test-images", type=int, default=20, help="test images per storage (part A)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=800, help="training patches per epoch")
    parser.add_argument("--skip-normalize", action="store_true")
    parser.add_argument("--augment", action="store_true", help="run part B")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds in part B")
    args = parser.parse_args()
    if args.quick:
        args.images, args.test_images, args.epochs, args.samples, args.seeds = 4, 2, 1, 32, 1
    report = {"machine": machine(), "args": vars(args)}
    markdown = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_normalize:
            print("Part A: normalisation", flush=True)
            report["normalize"] = part_normalize(args, work)
            markdown.append("Full-image test mIoU by storage (rows) and data.normalize (columns):\n\n" +
                            normalize_table(report["normalize"]))  # fmt: skip
        if args.augment:
            print("Part B: augmentation on 10 training images", flush=True)
            report["augment"] = part_augment(args, work)
            markdown.append("Full-image mIoU on 50 unseen images, 10 training images:\n\n" +
                            augment_table(report["augment"]))  # fmt: skip
    text = "\n\n".join(markdown)
    print("\n" + text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out / f"real_data{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"real_data{suffix}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
