"""Snapshot ensemble against its members: one cosine_restarts run, each snapshot_NN.pt and the ensemble of
all of them scored on the same unseen full images (full-image mIoU, the same tiled settings).

Run from the repository root:
    .venv/bin/python benchmarks/bench_snapshots.py            # 4 cycles, 8 epochs x 1000 samples, 50 test images
    .venv/bin/python benchmarks/bench_snapshots.py --quick    # 2 cycles on tiny data, seconds
Results: a markdown table on stdout, JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent

from unet_patches.api import Segmenter, evaluate_folder
from unet_patches.data.synthetic import generate_dataset
from unet_patches.inference.ensemble import checkpoint_paths
from unet_patches.training.config import load_config
from unet_patches.training.run import fit

from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(REPO / "parameters.json"))
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1000, help="samples per epoch")
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.epochs, args.samples, args.test_images = 2, 2, 64, 4
    root = Path(tempfile.mkdtemp(prefix="snapshots-"))
    base = load_config(args.params)
    generate_dataset(root / "synthetic", n_train=40 if args.quick else 100, n_test=args.test_images,
                     seed=base.synthetic.seed, spec=base.synthetic.spec())  # fmt: skip
    overrides = {"data": {"root": str(root)}, "training": {
        "folder": "synthetic/train", "epochs": args.epochs, "samples_per_epoch": args.samples, "run_name": "sgdr",
        "schedule": "cosine_restarts", "restart_cycles": args.cycles, "checkpoint_dir": str(root / "ck"),
        "log_dir": str(root / "runs")}}  # fmt: skip
    config = load_config(args.params, overrides)
    started = time.monotonic()
    summary = fit(config, progress_bars=False)
    train_seconds = time.monotonic() - started
    test, options = root / "synthetic" / "test", config.inference.predictor_options()
    rows = []
    for path in [*checkpoint_paths(summary["run_dir"]), Path(summary["run_dir"])]:
        scores = evaluate_folder(Segmenter.from_checkpoint(path), test, **options)
        rows.append({"members": path.name if path.suffix else "ensemble of all", "miou": scores["miou"],
                     **{f"iou_{k}": v for k, v in scores["iou"].items()}})  # fmt: skip
    best_member = max(r["miou"] for r in rows[:-1])
    report = {"machine": machine(), "settings": vars(args), "train_seconds": train_seconds, "rows": rows,
              "ensemble_minus_best_member": rows[-1]["miou"] - best_member}  # fmt: skip
    lines = [f"{args.cycles} cycles, {args.epochs} epochs x {args.samples} samples, {args.test_images} test images, "
             f"training {train_seconds:.0f} s ({summary['precision']})", "",
             "| checkpoint | full-image mIoU | " + " | ".join(k for k in rows[0] if k.startswith("iou_")) + " |",
             "|---" * (2 + sum(k.startswith("iou_") for k in rows[0])) + "|"]  # fmt: skip
    for r in rows:
        ious = " | ".join(f"{v:.4f}" for k, v in r.items() if k.startswith("iou_"))
        lines.append(f"| {r['members']} | {r['miou']:.4f} | {ious} |")
    lines.append(f"\nensemble - best member: {report['ensemble_minus_best_member']:+.4f}")
    print("\n".join(lines))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"snapshots-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
