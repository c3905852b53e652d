"""Window ``auto`` against window ``patch``, for every registered model: full-image mIoU on held-out images.

Each model of ``MODELS`` is trained for ``--minutes`` on the same synthetic training images (the
shipped recipe, ``parameters.json``, with only ``model.name`` changed; encoders from random
weights, nothing is downloaded) and then scored on the same unseen test images twice: with windows
of the training patch at overlap 0.5 (``window: patch``, the original's) and with the default
``window: auto``. The issue's bar: auto within 0.002 mIoU of patch (or better), for every model.
Also the prediction time of each, one process, same precision.

Run from the repository root:
    .venv/bin/python benchmarks/bench_window_auto.py               # 4 models x 3 minutes
    .venv/bin/python benchmarks/bench_window_auto.py --quick       # a smoke run
Results: a markdown table on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_patches.api import Segmenter, evaluate_folder
from unet_patches.data.synthetic import generate_dataset
from unet_patches.models import MODELS
from unet_patches.training.config import load_config
from unet_patches.training.run import fit

from common import Timer, machine, save_results

REPO = Path(__file__).resolve().parent.parent


def score(segmenter: Segmenter, folder: Path, window: str, precision: str) -> dict:
    evaluate_folder(segmenter, folder, window=window, precision=precision)  # warm-up (oneDNN, kept predictors)
    with Timer() as t:
        scores = evaluate_folder(segmenter, folder, window=window, precision=precision)
    return {"miou": scores["miou"], "iou": scores["iou"], "seconds": t.result.wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget per model")
    parser.add_argument("--train", type=int, default=40, help="synthetic training images")
    parser.add_argument("--test", type=int, default=20, help="synthetic test images (400 x 200)")
    parser.add_argument("--precision", default="fp32", help="inference precision of both runs")
    parser.add_argument("--models", nargs="+", default=list(MODELS.names))
    parser.add_argument("--quick", action="store_true", help="12 seconds per model, 10 + 4 images (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.train, args.test = 0.2, 10, 4

    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_window_auto_") as tmp:
        root = Path(tmp)
        generate_dataset(root / "synthetic", n_train=args.train, n_test=args.test, seed=21)
        for name in args.models:
            config = load_config(
                REPO / "parameters.json",
                {
                    "data": {"root": str(root)},
                    "model": {"name": name},
                    "training": {
                        "folder": "synthetic/train",
                        "epochs": None,
                        "time_budget_minutes": args.minutes,
                        "checkpoint_dir": str(root / "checkpoints"),
                        "log_dir": str(root / "runs"),
                        "run_name": name,
                    },
                },
            )
            print(f"training {name} for {args.minutes} minutes ...", file=sys.stderr, flush=True)
            summary = fit(config, progress_bars=False)
            segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
            patch = score(segmenter, root / "synthetic" / "test", "patch", args.precision)
            auto = score(segmenter, root / "synthetic" / "test", "auto", args.precision)
            rows[name] = {
                "epochs": summary["epochs"],
                "grid": segmenter.grid,
                "patch": patch,
                "auto": auto,
                "delta": auto["miou"] - patch["miou"],
                "speedup": patch["seconds"] / auto["seconds"],
            }
            print(f"  {name}: patch {patch['miou']:.4f}, auto {auto['miou']:.4f}", file=sys.stderr, flush=True)

    report = {
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "rows": rows,
    }
    lines = [
        f"Machine: {report['machine']['cpu']}, flags {' '.join(report['machine']['cpu_flags'])}; "
        f"{args.train} training / {args.test} test images (400 x 200), {args.minutes} min per model, "
        f"inference {args.precision}",
        "",
        "| model | grid | epochs | mIoU, window patch | mIoU, window auto | auto - patch | time patch / auto |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['grid']} | {r['epochs']} | {r['patch']['miou']:.4f} | {r['auto']['miou']:.4f} | "
            f"{r['delta']:+.4f} | {r['speedup']:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    save_results("window_auto", report, text)


if __name__ == "__main__":
    main()
