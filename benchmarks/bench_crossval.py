"""k-fold cross-validation on the synthetic data: the out-of-fold score and its spread, and whether the
fold ensemble beats one model trained on every image, on unseen test images.

``--train`` synthetic training images (default 40) and ``--test`` unseen ones (default 20), the
demo's generator and the settings of ``parameters.json`` (on-the-fly patches from the full images),
with the same time budget per training run (``--minutes``):

- ``unet-patches crossval -k K``: K fold models (each trained on (K-1)/K of the images), the pooled
  out-of-fold mIoU and the spread of the fold mIoUs (``cv.json``);
- one model trained on all the images (``training.val_fraction = 0``: no validation; its last.pt);
- on the test images (full-image mIoU, ``api.evaluate_folder``): the K-fold ensemble (the
  cross-validation folder as a checkpoint), each fold model alone, and the single model.

Run from the repository root:
    .venv/bin/python benchmarks/bench_crossval.py               # 40 images, 5 folds, 1.5 min a run: ~10 min
    .venv/bin/python benchmarks/bench_crossval.py --quick       # 12 images, 3 folds, 10 s a run
Results: markdown on stdout, JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, save_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=1.5, help="time budget of each training run")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.k, args.minutes = 12, 6, 3, 10 / 60

    from unet_patches.api import Segmenter, evaluate_folder
    from unet_patches.data.synthetic import generate_dataset
    from unet_patches.training.config import load_config
    from unet_patches.training.crossval import run_crossval
    from unet_patches.training.run import fit

    results: dict = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = load_config("parameters.json")
        generate_dataset(
            root / "synthetic", **{**config.synthetic.dataset_options(), "n_train": args.train, "n_test": args.test}
        )
        training = {
            "folder": str(root / "synthetic" / "train"),
            "epochs": None,
            "time_budget_minutes": args.minutes,
            "checkpoint_dir": str(root / "checkpoints"),
            "log_dir": str(root / "runs"),
        }
        config = config.merged({"data": {"root": str(root)}, "training": training})
        start = time.perf_counter()
        report = run_crossval(config.merged({"training": {"folds": args.k, "run_name": "cv"}}), progress_bars=False)
        results["crossval_s"] = time.perf_counter() - start
        start = time.perf_counter()
        single = fit(config.merged({"training": {"val_fraction": 0.0, "run_name": "all"}}), progress_bars=False)
        results["single_s"] = time.perf_counter() - start
        test = root / "synthetic" / "test"
        options = config.inference.predictor_options()
        cv_dir = root / "checkpoints" / "cv"
        results["oof"] = {"pooled_miou": report["pooled"]["miou"], "fold_miou": report["fold_miou"]}
        results["test"] = {
            "ensemble": evaluate_folder(Segmenter.from_checkpoint(cv_dir), test, **options)["miou"],
            "folds": [
                evaluate_folder(Segmenter.from_checkpoint(cv_dir / f"fold_{i}" / "best.pt"), test, **options)["miou"]
                for i in range(args.k)
            ],
            "single": evaluate_folder(Segmenter.from_checkpoint(single["last_checkpoint"]), test, **options)["miou"],
        }
        results["cv_md"] = (cv_dir / "cv.md").read_text()
    text = report_text(results)
    print(text)
    save_results("crossval", results, text)
    return 0


def report_text(results: dict) -> str:
    a, oof, test = results["args"], results["oof"], results["test"]
    spread = oof["fold_miou"]
    folds = ", ".join(f"{m:.4f}" for m in test["folds"])
    return "\n".join(
        [
            f"Machine: {results['machine']['cpu']}, flags {' '.join(results['machine']['cpu_flags'])}",
            "",
            f"{a['k']}-fold cross-validation of {a['train']} synthetic images, {a['minutes']:g} min per training run "
            f"({results['crossval_s']:.0f} s for the folds and the out-of-fold predictions):",
            "",
            results["cv_md"],
            f"On {a['test']} unseen test images (full-image mIoU):",
            "",
            "| model | test mIoU |",
            "|---|---|",
            f"| {a['k']}-fold ensemble (one tiled pass) | {test['ensemble']:.4f} |",
            f"| fold models alone | {folds} (mean {sum(test['folds']) / len(test['folds']):.4f}) |",
            f"| one model trained on all {a['train']} images | {test['single']:.4f} |",
            "",
            f"Out-of-fold pooled mIoU {oof['pooled_miou']:.4f}; fold mIoU {spread['mean']:.4f} +- {spread['std']:.4f}.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
