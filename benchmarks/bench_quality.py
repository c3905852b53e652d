"""Mask quality at equal wall-clock minutes on the same machine: our default recipe, the same with the
U-Net paper's pixel weights, and a MONAI user's recipe, trained on a handful of images of realistic
testbeds and scored by full-image test mIoU and per-class IoU.

Testbeds (each drawn anew per seed; training images few, as real data sets are):
  - ``nuclei-easy``: sparse, bright, sharp nuclei (``generate --kind nuclei`` with density 0.08-0.2,
    photons 400-1500, blur 0.5-0.9), 256 x 256, 16-bit using 0-3000;
  - ``nuclei-hard``: crowded, dim, blurred, unevenly lit nuclei (density 0.45-0.6, photons 30-150,
    blur 1.0-1.8, illumination drop up to 0.5);
  - ``shapes``: the lines and ellipses of ``generate`` (400 x 200).
Recipes (each in a fresh process of 2 threads, trained for ``--minutes`` of wall time, then scored):
  - ``ours``: the shipped parameters.json (U-Net, Dice + CE, SGD, cosine, on-the-fly patches, percentile
    normalisation), ``training.time_budget_minutes`` = the budget; scored with ``best.pt`` (picked on
    the held-back images predicted whole, as shipped) and ``last.pt``;
  - ``ours+weights``: the same with ``training.pixel_weights: unet``;
  - ``planned``: ``unet-patches train --plan --time-budget M`` (the recipe planned for the testbed's
    training folder and the minutes, steps timed in the child process before its clock starts);
  - ``monai``: what a MONAI user writes: ``BasicUNet`` (features 32, 32, 64, 128, 256, 32), ``DiceCELoss``
    (softmax, one-hot targets), Adam 1e-3, per-image min-max intensity scaling, 96 x 96 crops
    ``RandCropByPosNegLabel``-style (half centred on foreground), random flips and quarter turns,
    batch 16; scored with ``sliding_window_inference`` (window 96, overlap 0.25, gaussian), and again with
    the softmax of the four flips averaged (``tta``, what our ``--tta`` does), from the same weights.

Run from the repository root (nothing else running: the recipes share the budget of wall time):
    .venv/bin/python benchmarks/bench_quality.py --minutes 5 --seeds 0 1
    .venv/bin/python benchmarks/bench_quality.py --minutes 0.2 --seeds 0 --quick     # plumbing only
    .venv/bin/python benchmarks/bench_quality.py --recipes planned --override '{"model": {"base_width": 32}}' \
        --label planned-w32 --testbeds nuclei-hard --seeds 0                       # a variant
Results: markdown tables on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
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

from common import cpu_flags, machine, save_results

TESTBEDS = ("nuclei-easy", "nuclei-hard", "shapes")
RECIPES = ("ours", "ours+weights", "planned", "monai")
NUCLEI = {
    "nuclei-easy": {"density": (0.08, 0.2), "photons": (400.0, 1500.0), "blur": (0.5, 0.9), "illumination": (0.0, 0.2)},
    "nuclei-hard": {"density": (0.45, 0.6), "photons": (30.0, 150.0), "blur": (1.0, 1.8), "illumination": (0.2, 0.5)},
}


def make_testbed(name: str, root: Path, seed: int, n_train: int, n_test: int) -> tuple[Path, list[str]]:
    """The testbed's folder (train/ and test/) and its class names."""
    folder = root / f"{name}-{seed}"
    if name == "shapes":
        from unet_patches.data.synthetic import CLASS_NAMES, generate_dataset

        if not folder.exists():
            generate_dataset(folder, n_train=n_train, n_test=n_test, seed=seed)
        return folder, list(CLASS_NAMES)
    from unet_patches.data.nuclei import NUCLEI_CLASS_NAMES, NucleiSpec, generate_nuclei

    if not folder.exists():
        generate_nuclei(folder, n_train, n_test, seed, NucleiSpec(**NUCLEI[name]))
    return folder, list(NUCLEI_CLASS_NAMES)


# ------------------------------------------------------------------------------------------- ours


def train_ours(job: dict) -> dict:
    from unet_patches.api import Segmenter, evaluate_folder
    from unet_patches.training.config import load_config
    from unet_patches.training.run import fit

    folder, out = Path(job["folder"]), Path(job["out"])
    training = {
        "folder": str(folder / "train"),
        "epochs": None,
        "time_budget_minutes": job["minutes"],
        "seed": job["seed"],
        "checkpoint_dir": str(out / "checkpoints"),
        "log_dir": str(out / "runs"),
        "run_name": "run",
    }
    if job["recipe"] == "ours+weights":
        training["pixel_weights"] = "unet"
    overrides = {"data": {"class_names": job["classes"]}, "training": training}
    config = load_config(REPO / "parameters.json", overrides)
    plan = None
    if job["recipe"] == "planned":
        from unet_patches.training.planning import plan_training

        plan = plan_training(config, job["minutes"])
        config = config.merged(plan.overrides()).merged(overrides)
    if job.get("override"):  # an exploratory variant: settings over the recipe's (and the plan's)
        config = config.merged(job["override"])
    started = time.monotonic()
    summary = fit(config, progress_bars=False, overwrite=True)
    seconds = time.monotonic() - started
    result = {"train_seconds": seconds, "epochs": summary["epochs"], "steps": summary["steps"]}
    if plan is not None:
        result["plan"] = plan.lines()
    for which in ("best", "last"):
        path = Path(summary[f"{which}_checkpoint"])
        if not path.exists():  # no images held back (training.val_fraction 0): no best.pt, last.pt stands in
            path = Path(summary["last_checkpoint"])
        segmenter = Segmenter.from_checkpoint(path)
        scores = evaluate_folder(segmenter, folder / "test", **config.inference.predictor_options())
        result[which] = {"miou": scores["miou"], "iou": scores["iou"]}
    return result


# ------------------------------------------------------------------------------------------ MONAI


def _monai_batches(images: list[np.ndarray], masks: list[np.ndarray], rng: np.random.Generator, size: int):
    """Endless batches of 16 crops of ``size``: half centred on a foreground pixel, half anywhere (as
    ``RandCropByPosNegLabel(pos=1, neg=1)``), each flipped and turned at random."""
    import torch

    while True:
        xs, ys = [], []
        for _ in range(16):
            j = int(rng.integers(len(images)))
            image, mask = images[j], masks[j]
            h, w = mask.shape
            foreground = np.flatnonzero(mask > 0)
            if rng.random() < 0.5 and foreground.size:
                cy, cx = divmod(int(foreground[rng.integers(foreground.size)]), w)
                y, x = min(max(cy - size // 2, 0), h - size), min(max(cx - size // 2, 0), w - size)
            else:
                y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
            img, msk = image[:, y : y + size, x : x + size], mask[y : y + size, x : x + size]
            if rng.random() < 0.5:
                img, msk = img[:, :, ::-1], msk[:, ::-1]
            if rng.random() < 0.5:
                img, msk = img[:, ::-1], msk[::-1]
            turns = int(rng.integers(4))
            img, msk = np.rot90(img, turns, axes=(1, 2)), np.rot90(msk, turns)
            xs.append(np.ascontiguousarray(img))
            ys.append(np.ascontiguousarray(msk))
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))


def _minmax(raw: np.ndarray) -> np.ndarray:
    image = raw.astype(np.float32)
    image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0).mean(0, keepdims=True)
    return (image - image.min()) / max(float(image.max() - image.min()), 1e-6)


def train_monai(job: dict) -> dict:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from unet_patches.data.folders import find_pairs
    from unet_patches.data.imageio import read_image
    from unet_patches.metrics import ConfusionMatrix

    folder, classes = Path(job["folder"]), len(job["classes"])
    torch.manual_seed(job["seed"])
    pairs = find_pairs(folder / "train")
    images = [_minmax(read_image(p.image)) for p in pairs]
    masks = [read_image(p.mask).astype(np.int64) for p in pairs]
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=classes, features=(32, 32, 64, 128, 256, 32))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batches = _monai_batches(images, masks, np.random.default_rng(job["seed"]), 96)
    started, steps = time.monotonic(), 0
    model.train()
    while time.monotonic() - started < job["minutes"] * 60:
        x, y = next(batches)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        steps += 1
    seconds = time.monotonic() - started
    model.eval()
    matrix, flipped = ConfusionMatrix(classes), ConfusionMatrix(classes)
    with torch.no_grad():
        for pair in find_pairs(folder / "test"):
            image = torch.from_numpy(_minmax(read_image(pair.image))[None])
            mask = read_image(pair.mask)
            probs = []
            for dims in ((), (3,), (2,), (2, 3)):  # the same flips as our --tta
                view = image.flip(dims) if dims else image
                logits = sliding_window_inference(view, (96, 96), 8, model, overlap=0.25, mode="gaussian")
                probs.append(logits.softmax(1).flip(dims) if dims else logits.softmax(1))
            matrix.update(probs[0].argmax(1)[0].numpy().astype(np.uint8), mask)
            flipped.update(torch.stack(probs).mean(0).argmax(1)[0].numpy().astype(np.uint8), mask)
    scores, tta = matrix.summary(job["classes"]), flipped.summary(job["classes"])
    last = {"miou": scores["miou"], "iou": scores["iou"]}
    result = {"train_seconds": seconds, "steps": steps, "epochs": None, "best": last, "last": last}
    return {**result, "tta": {"miou": tta["miou"], "iou": tta["iou"]}}


# ------------------------------------------------------------------------------------------ driver


def run_child(job: dict) -> dict:
    """One recipe on one testbed, in a fresh process of 2 threads (1 with --threads 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{job['recipe']} on {job['testbed']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict], classes: dict[str, list[str]]) -> str:
    lines = []
    for testbed in dict.fromkeys(r["testbed"] for r in results):
        names = classes[testbed]
        lines += [
            f"### {testbed}",
            "",
            "| recipe | seed | steps | full-image mIoU (best.pt) | mIoU (last) | "
            + " | ".join(f"{n} IoU (best)" for n in names)
            + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(names),
        ]
        rows = [r for r in results if r["testbed"] == testbed]
        for r in rows:
            ious = " | ".join(f"{(r['best']['iou'][n] or 0):.4f}" for n in names)
            lines.append(
                f"| {r['recipe']} | {r['seed']} | {r['steps']} | {r['best']['miou']:.4f} | {r['last']['miou']:.4f}"
                + (f" (flip TTA {r['tta']['miou']:.4f})" if "tta" in r else "")
                + f" | {ious} |"
            )
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            mine = [r for r in rows if r["recipe"] == recipe]
            best = [r["best"]["miou"] for r in mine]
            per_class = " | ".join(f"{np.mean([(r['best']['iou'][n] or 0) for r in mine]):.4f}" for n in names)
            spread = f" +- {np.std(best):.4f}" if len(best) > 1 else ""
            lines.append(
                f"| **{recipe}, mean** | {len(mine)} seeds | | **{np.mean(best):.4f}**{spread} | "
                f"{np.mean([r['last']['miou'] for r in mine]):.4f} | {per_class} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training minutes per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--testbeds", nargs="+", choices=TESTBEDS, default=list(TESTBEDS))
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--n-train", type=int, default=12, help="training images per testbed (few, as real sets)")
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", help="where the testbeds and runs go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="4 training and 2 test images: the plumbing only")
    parser.add_argument(
        "--override",
        type=json.loads,
        metavar="JSON",
        help='settings merged over our recipes (after the plan), e.g. \'{"model": {"base_width": 32}}\'; '
        "recorded in the results; for trying a variant",
    )
    parser.add_argument("--label", help="the name of the recipe in the tables when --override is given")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        result = (train_monai if job["recipe"] == "monai" else train_ours)(job)
        print(json.dumps(result))
        return 0
    n_train, n_test = (4, 2) if args.quick else (args.n_train, args.n_test)
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-quality-"))
    results, classes = [], {}
    for testbed in args.testbeds:
        for seed in args.seeds:
            folder, classes[testbed] = make_testbed(testbed, root / "data", seed, n_train, n_test)
            for recipe in args.recipes:
                job = {
                    "recipe": recipe,
                    "testbed": testbed,
                    "seed": seed,
                    "minutes": args.minutes,
                    "folder": str(folder),
                    "classes": classes[testbed],
                    "threads": args.threads,
                    "out": str(root / "runs" / f"{testbed}-{seed}-{args.label or recipe}"),
                }
                if args.override and recipe != "monai":
                    job.update(override=args.override, label=args.label or f"{recipe}+override")
                print(f"{testbed}, seed {seed}: {job.get('label', recipe)} for {args.minutes:g} min ...", flush=True)
                result = {**job, **run_child(job)}
                result["recipe"] = job.get("label", recipe)  # a variant is tabled under its label
                for line in result.get("plan", []):
                    print(f"    plan: {line}")
                extra = f", {result['tta']['miou']:.4f} (flip TTA)" if "tta" in result else ""
                print(
                    f"  full-image mIoU {result['best']['miou']:.4f} (best.pt), {result['last']['miou']:.4f} (last){extra}"
                )
                results.append(result)
                (root / "partial.json").write_text(json.dumps(results))  # what an interrupted run got so far
    info = machine()
    head = [
        f"# Mask quality at equal minutes ({args.minutes:g} min of training per run, {args.threads} threads)",
        f"{info['cpu']}, CPU flags {' '.join(cpu_flags())}; {n_train} training and {n_test} test images per "
        f"testbed and seed; seeds {args.seeds}.",
        "",
    ]
    text = "\n".join(head) + table(results, classes)
    print(text)
    print(f"wrote {save_results('quality', {'machine': info, 'results': results}, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
