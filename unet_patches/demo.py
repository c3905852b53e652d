"""``make demo``: the whole pipeline on built-in synthetic data, then the figures.

1. generate ``synthetic.n_train`` training and ``synthetic.n_test`` test images (seeded, 100 and 50
   in the shipped settings) into ``data/demo/synthetic``: the lines and ellipses, or, with ``--kind
   nuclei``, images of touching nuclei (the ``nuclei`` section; ``data/demo/nuclei``);
2. cut random patches with flips into ``data/demo/patches_s96`` (the original's on-disk patch set);
3. train with the settings of ``parameters.json`` under its time budget (``checkpoints/demo/``,
   ``runs/demo/``), in two processes of one thread each (``torchrun``) on machines with two or more
   cores, which get through more samples than one process in the same minutes (BENCHMARKS.md,
   training); ``--processes 1`` trains in this process;
4. score full-image sliding-window predictions on the unseen test images;
5. write label masks and colour overlays of the test images to ``data/demo/predictions``.

The demo writes ``data/demo``, ``checkpoints/demo`` and ``runs/demo``. When an earlier demo (or anything
else) is there, it takes the next free name, ``demo-2``, ``demo-3``, ..., and says so; nothing is
deleted or replaced unless ``--overwrite`` (``make demo OVERWRITE=1``) asks to redo ``demo`` itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import DEFAULT_PARAMS, params_path, run_guarded
from .data.config import SYNTHETIC_KINDS
from .data.nuclei import NUCLEI_CLASS_NAMES
from .errors import UserError

if TYPE_CHECKING:
    from .api import Segmenter
    from .training.config import Config

# Training time of the demo: 10 minutes, the budget its README figures were measured with.
DEMO_MINUTES = 10.0


def run(
    params: str | None,
    minutes: float | None,
    overwrite: bool = False,
    processes: int | None = None,
    kind: str = "shapes",
) -> int:
    from .api import Segmenter, evaluate_folder, predict_files
    from .data.patches import extract_patches
    from .training.config import load_config

    started = time.monotonic()
    config = load_config(params_path(params))
    if kind == "nuclei":  # the nuclei's classes; the settings of the nuclei section draw the images
        config = config.merged({"data": {"num_classes": 3, "class_names": list(NUCLEI_CLASS_NAMES)}})
    name = demo_name(config, overwrite)
    root = Path(config.data.root) / name
    if name != "demo":
        earlier = Path(config.data.root) / "demo"
        print(f"an earlier demo is in {earlier}; this one goes to {root} (--overwrite redoes demo)")
    synthetic, patches = (
        root / ("synthetic" if kind == "shapes" else kind),
        root / f"patches_s{config.patches.patch_size}",
    )
    s, p = config.synthetic, config.patches

    print(f"[1/5] generating {s.n_train} training + {s.n_test} test images ({kind}) in {synthetic}")
    generate(config, kind, synthetic, overwrite)
    print(f"[2/5] extracting {p.per_image} random {p.patch_size}x{p.patch_size} patches per image into {patches}")
    cut = extract_patches(synthetic / "train", patches, overwrite=overwrite, **config.patch_options())
    print(f"      kept {cut['windows_kept']} of {cut['windows_drawn']} windows, wrote {cut['patches']} patches")

    training = config.merged({"training": _demo_training(config, synthetic, patches, minutes, name)})
    t = training.training
    budget = f"up to {t.time_budget_minutes:g} min" if t.time_budget_minutes else f"{t.epochs} epochs"
    processes = training_processes() if processes is None else processes
    where = f"{processes} processes" if processes > 1 else "1 process"
    print(f"[3/5] training ({budget}, {where}) on {t.folder}; TensorBoard: tensorboard --logdir {t.log_dir}")
    if overwrite:
        shutil.rmtree(Path(t.log_dir) / name, ignore_errors=True)
    result = train(training, root, processes, overwrite)

    print(f"[4/5] full-image evaluation on the {s.n_test} unseen test images")
    segmenter = Segmenter.from_checkpoint(result["best_checkpoint"])
    options = config.inference.predictor_options()
    scores = evaluate_folder(segmenter, synthetic / "test", **options)
    out = root / "predictions"
    print(f"[5/5] writing label masks and overlays of the test images to {out}")
    logging.getLogger("unet_patches.inference.job").setLevel(logging.WARNING)  # not one line per file
    predict_files(segmenter, [str(synthetic / "test" / "images")], out, overwrite=overwrite, progress=False, **options)
    panel = root / "demo_panel.png"
    write_panel(segmenter, synthetic / "test", panel, options)
    report = _report(scores, result, time.monotonic() - started, out, panel)
    (root / "demo_result.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report, scores, s.n_test)
    return 0


def generate(config: Config, kind: str, folder: Path, overwrite: bool) -> None:
    """The demo's data: the shapes of ``synthetic`` or the nuclei of ``nuclei``, counts and seed of ``synthetic``."""
    from .data.nuclei import generate_nuclei
    from .data.synthetic import generate_dataset, prepare_output

    s = config.synthetic
    if kind == "shapes":
        generate_dataset(folder, overwrite=overwrite, **s.dataset_options())
        return
    prepare_output(folder, overwrite)
    generate_nuclei(folder, s.n_train, s.n_test, s.seed, config.nuclei.spec(), instances=config.nuclei.instances)


def training_processes() -> int:
    """2 on a machine with two or more cores (where PyTorch has gloo), else 1."""
    import torch.distributed

    return 2 if (os.cpu_count() or 1) >= 2 and torch.distributed.is_gloo_available() else 1


def train(config: Config, root: Path, processes: int, overwrite: bool) -> dict[str, Any]:
    """Train as ``config`` says, in this process or under ``torchrun`` in ``processes`` processes of
    ``cores / processes`` threads (the settings written to ``root/training_settings.json``); the run's
    summary.

    Raises:
        UserError: the processes failed (their messages are above).
    """
    if processes == 1:
        from .training.run import fit

        return fit(config, overwrite=overwrite)
    from .training.config import save_config

    settings = root / "training_settings.json"
    save_config(config, settings)
    threads = max(1, (os.cpu_count() or processes) // processes)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "unet_patches",
        "train",
        "--params",
        str(settings),
        "--json",
        *(["--overwrite"] if overwrite else []),
    ]
    done = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise UserError(
            f"training in {processes} processes stopped (exit status {done.returncode}; its messages are above); "
            "fix what they say, or train in one process with --processes 1"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo_name(config: Config, overwrite: bool) -> str:
    """``demo``, or with an earlier demo's folders in place and no ``overwrite``, the first free
    ``demo-N`` (free under the data root, the checkpoint folder and the TensorBoard folder)."""
    t = config.training
    parents = (Path(config.data.root), Path(t.checkpoint_dir), Path(t.log_dir))
    for n in range(1, 10_000):
        name = "demo" if n == 1 else f"demo-{n}"
        if (overwrite and n == 1) or not any((parent / name).exists() for parent in parents):
            return name
    raise UserError(f"{config.data.root}: no free demo-N folder name; remove old demo folders")


def _demo_training(
    config: Config, synthetic: Path, patches: Path, minutes: float | None, name: str = "demo"
) -> dict[str, Any]:
    """The demo's training settings: its own run name and data; with ``minutes``, the budget alone
    ends training. ``training.folder`` picks the kind of source inside data/demo: a patch folder (a
    name starting with "patches") or the full training images, sampled on the fly."""
    folder = patches if Path(config.training.folder).name.startswith("patches") else synthetic / "train"
    values: dict[str, Any] = {"folder": str(folder), "run_name": name}
    if minutes is not None:
        values.update(time_budget_minutes=minutes, epochs=None)
    return values


def _report(scores: dict, result: dict, total: float, out: Path, panel: Path) -> dict[str, Any]:
    def rounded(values: dict) -> dict:
        return {k: (None if v is None else round(v, 4)) for k, v in values.items()}

    return {
        "full_image_test_miou": round(scores["miou"], 4),
        "iou": rounded(scores["iou"]),
        "dice": rounded(scores["dice"]),
        "best_validation_miou": None if result["best_val_miou"] is None else round(result["best_val_miou"], 4),
        "epochs": result["epochs"],
        "training_seconds": round(result["seconds"]),
        "total_seconds": round(total),
        "precision": result["precision"],
        "checkpoint": result["best_checkpoint"],
        "overlays": str(out),
        "panel": str(panel),
    }


def _print_report(report: dict[str, Any], scores: dict, n_test: int) -> None:
    print()
    print("demo result")
    print(f"  full-image mIoU on {n_test} unseen test images: {scores['miou']:.4f}")
    for name in scores["iou"]:
        iou, dice = scores["iou"][name], scores["dice"][name]
        print(f"    {name:<12} IoU {iou:.4f}  Dice {dice:.4f}")
    print(f"  best validation mIoU (patches of held-back images): {report['best_validation_miou']}")
    print(
        f"  trained {report['epochs']} epochs in {report['training_seconds']} s ({report['precision']}); "
        f"whole demo {report['total_seconds']} s"
    )
    print(f"  checkpoint: {report['checkpoint']}   overlays: {report['overlays']}/*_overlay.png")
    print(f"  panel: {report['panel']}")


def write_panel(segmenter: Segmenter, folder: Path, path: Path, options: dict) -> None:
    """The first test image | its predicted overlay | the true overlay, side by side."""
    import numpy as np

    from .api import predict
    from .data.folders import find_pairs
    from .data.imageio import colour_overlay, image_to_array, read_image, write_png

    pair = find_pairs(folder)[0]
    raw = read_image(pair.image)
    labels = predict(segmenter, raw, **options)
    image = image_to_array(raw, segmenter.in_channels, str(pair.image))
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)  # a 16-bit scan, stretched
    gray = (np.repeat(image.mean(0)[..., None], 3, axis=2) * 255).astype(np.uint8)
    truth = segmenter.preprocess.read_mask(pair.mask)
    gap = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    write_png(
        path, np.concatenate([gray, gap, colour_overlay(image, labels), gap, colour_overlay(image, truth)], axis=1)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unet_patches.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--params", help=f"settings file (default: ./{DEFAULT_PARAMS} when present)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEMO_MINUTES,
        help=f"training time budget in minutes (default: {DEMO_MINUTES:g})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo data/demo, checkpoints/demo and runs/demo in place"
    )
    parser.add_argument(
        "--kind",
        choices=SYNTHETIC_KINDS,
        default="shapes",
        help="the data: the lines and ellipses (shapes, the default) or images of touching nuclei (nuclei)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        help="training processes (default: 2 on machines with two or more cores, else 1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_guarded(lambda: run(args.params, args.minutes, args.overwrite, args.processes, args.kind), "demo")


if __name__ == "__main__":
    sys.exit(main())
