"""Training: the precision policy, the cost of the data pipeline, and (optional) 2-process DDP.

Everything runs the package's own training step, ``training.loops.train_one_epoch``, on the model of
``parameters.json`` (its ``model`` section) with the batch size of its ``training`` section.

Part A (one process, same model, same batches): training throughput in patches per second with
  ``precision=auto``, ``fp32`` and forced ``bf16`` (and, in full mode, fp32 in the contiguous
  layout, to show what channels_last buys). ``auto`` resolves to bf16 only on CPUs with native
  bf16 (AMX / AVX-512 BF16); on an AVX2-only CPU it is fp32 + channels_last, so auto / fp32 is ~1
  there by construction and the bf16 row shows the slowdown that auto avoids.
Part B (one process): the data pipeline's share of the step time. Steps fed by the real DataLoader
  (``data.make_datasets`` + ``data.make_loader``: on-the-fly ``RandomPatches`` from full
  synthetic images, and a ``PatchFolder`` of PNG patches) against the same batches as ready-made
  tensors, interleaved step by step so that both see the same background load. The share is
  measured two ways: the time spent waiting for the next batch over the loader-fed step time
  (the figure held to the target, <= 10 %); and (loader-fed - ready-made) / loader-fed step time,
  which is the difference of two noisy timings and only meaningful on a quiet machine.
Part C (``--ddp``): ``train.py`` under ``torchrun --nproc_per_node 2`` against one process, on the
  same samples per epoch and the same epochs (and one process at DDP's global batch); final
  validation mIoU as recorded by training and re-evaluated here in one process from last.pt, and
  the full-image mIoU of last.pt on ``--test-images`` unseen synthetic images.
  The model is that of parameters.json but for ``--ddp-width`` (8 with --quick). A --quick
  run is far too short to learn the foreground classes: it checks the plumbing, not the accuracy.

Run from the repository root:
    .venv/bin/python benchmarks/bench_training.py                 # full, several minutes
    .venv/bin/python benchmarks/bench_training.py --quick         # patch 48, 2 steps x 2 repeats: seconds when idle,
                                                                  # ~2 minutes on a busy 2-core machine
    .venv/bin/python benchmarks/bench_training.py --quick --ddp   # plus the DDP comparison
    .venv/bin/python benchmarks/bench_training.py --ddp --skip-precision --skip-pipeline --images 100 \
        --ddp-samples 2000 --ddp-epochs 10                        # DDP at the demo's scale, ~15 min
Results: markdown tables on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from unet_patches import runtime
from unet_patches.api import Segmenter, evaluate_folder
from unet_patches.data.patches import extract_patches
from unet_patches.data.synthetic import generate_dataset
from unet_patches.losses import build_loss
from unet_patches.models import build_model, count_parameters
from unet_patches.models import checkpoint as checkpoints
from unet_patches.training import datasets as data
from unet_patches.training import loops, optim
from unet_patches.training.config import config_from_dict, load_config

from common import Timer, machine, save_results

CPU = torch.device("cpu")
PIPELINE_TARGET = 0.10


# --------------------------------------------------------------------------------------- setup


def make_config(args: argparse.Namespace, root: Path, folder: str, **training_values):
    """parameters.json with the data under ``root`` and this benchmark's batch and patch size."""
    values = dict(
        folder=folder, batch_size=args.batch_size, checkpoint_dir=str(root / "ck"), log_dir=str(root / "runs")
    )
    values.update(training_values)
    overrides = {"data": {"root": str(root)}, "patches": {"patch_size": args.patch_size}, "training": values}
    return load_config(args.params, overrides)


def make_data(args: argparse.Namespace, root: Path) -> None:
    """Full synthetic images (the generator settings of parameters.json) and a patch folder cut from them."""
    base = load_config(args.params)
    generate_dataset(
        root / "synthetic",
        n_train=args.images,
        n_test=args.test_images if args.ddp else 0,
        seed=base.synthetic.seed,
        spec=base.synthetic.spec(),
    )
    options = {**base.patch_options(), "patch_size": args.patch_size, "per_image": args.patches_per_image}
    extract_patches(root / "synthetic" / "train", root / "patches", **options)


class Trainer:
    """The pieces of ``training.fit`` that a step needs: model (in the policy's layout), loss, optimiser."""

    def __init__(self, config, precision: runtime.Precision, compiled: bool = False) -> None:
        t = config.training
        torch.manual_seed(t.seed)
        self.model = build_model(config.model)
        if precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compile_s = 0.0
        self.train_model = torch.compile(self.model) if compiled else self.model
        self.loss_fn = build_loss(t.loss, config.data.num_classes)
        self.optimizer = optim.build_optimizer(
            t.optimizer, self.model.parameters(), t.learning_rate, t.momentum, t.weight_decay
        )
        self.precision = precision

    def run(self, batches) -> tuple[float, float, float]:
        """One pass of ``train_one_epoch`` over ``batches``: (wall s, process CPU s, mean loss)."""
        progress = optim.RunClock(total_steps=10**9)
        progress.start()
        with Timer() as timer:
            loss = loops.train_one_epoch(
                self.train_model,
                batches,
                self.loss_fn,
                self.optimizer,
                progress,
                lambda fraction: None,
                device=CPU,
                precision=self.precision,
            )
        return timer.result.wall, timer.result.cpu, loss


class Interleaved:
    """Alternate ready-made batches and batches fetched from a loader, timing each step from outside.

    Yields ``ready[0]``, the loader's first batch, its second, ``ready[1]``, ``ready[2]``, its third,
    ... (``ready[i]`` is the loader's batch ``i``: the same work). For each batch it
    records the time spent getting it (``wait``: ~0 for a ready batch, the data pipeline for a
    loader batch) and the time until the consumer asks for the next one (``compute``: the training
    step). Interleaving exposes both kinds of step to the same background load.
    """

    def __init__(self, ready: list, loader) -> None:
        self.ready, self.loader = ready, loader
        self.wait = {"ready": 0.0, "loader": 0.0}
        self.compute = {"ready": 0.0, "loader": 0.0}
        self.count = {"ready": 0, "loader": 0}

    def __iter__(self):
        start = time.perf_counter()
        iterator = iter(self.loader)  # worker start-up, if any, counts as waiting
        self.wait["loader"] += time.perf_counter() - start
        for i, batch_ready in enumerate(self.ready):
            # Alternate which kind goes first, so that neither always follows the other.
            for kind in ("ready", "loader") if i % 2 == 0 else ("loader", "ready"):
                start = time.perf_counter()
                batch = batch_ready if kind == "ready" else next(iterator)
                got = time.perf_counter()
                self.wait[kind] += got - start
                self.count[kind] += 1
                yield batch
                self.compute[kind] += time.perf_counter() - got

    def step(self, kind: str) -> float:
        return (self.wait[kind] + self.compute[kind]) / self.count[kind]


def take(loader, n: int) -> list:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


# ------------------------------------------------------------------------------------- part A


def precision_part(args: argparse.Namespace, root: Path) -> dict:
    config = make_config(args, root, "synthetic/train", samples_per_epoch=args.steps * args.batch_size)
    sources = data.make_datasets(config)
    loader = data.make_loader(sources.train, args.batch_size, train=True, seed=0, num_workers=0)
    batches = take(loader, args.steps)
    auto = runtime.resolve_precision("auto", CPU)
    modes = [
        ("auto", auto),
        ("fp32", runtime.resolve_precision("fp32", CPU)),
        ("bf16 (forced)", runtime.resolve_precision("bf16", CPU)),
    ]
    if not args.quick:
        modes.insert(2, ("fp32, contiguous layout", runtime.Precision("fp32", None, False)))
    trainers = {label: Trainer(config, precision) for label, precision in modes}
    if not args.no_compile:
        # torch.compile of the training step (forward and backward graphs), for the decision the
        # issue asks for: enable it by default only on the CPUs where it wins.
        for label, precision in (("auto, compiled", auto), ("fp32, compiled", modes[1][1])):
            modes.append((label, precision))
            trainers[label] = Trainer(config, precision, compiled=True)
    for label, trainer in trainers.items():
        with Timer() as warm:
            trainer.run(batches[: args.warmup])
        trainer.compile_s = warm.result.wall
        print(f"  A {label}: warm-up {warm.result.wall:.1f} s", flush=True)
    # Round robin over the modes, so that a change in background load hits all of them alike.
    runs: dict[str, list] = {label: [] for label in trainers}
    for _ in range(args.repeats):
        for label, trainer in trainers.items():
            runs[label].append(trainer.run(batches))
    rows = []
    for label, precision in modes:
        wall, cpu, loss = min(runs[label])
        rows.append(
            {
                "mode": label,
                "resolved": precision.name,
                "channels_last": precision.channels_last,
                "step_s": wall / len(batches),
                "cpu_s_per_step": cpu / len(batches),
                "patches_per_s": len(batches) * args.batch_size / wall,
                "all_step_s": [r[0] / len(batches) for r in runs[label]],
                "warmup_s": trainers[label].compile_s,
                "loss_finite": math.isfinite(loss),
            }
        )
        print(f"  A {label}: {rows[-1]['patches_per_s']:.2f} patches/s", flush=True)
    by = {r["mode"]: r for r in rows}
    return {
        "rows": rows,
        "auto_resolves_to": auto.name,
        "auto_channels_last": auto.channels_last,
        "cpu_has_fast_bf16": runtime.cpu_has_fast_bf16(),
        "auto_over_fp32": by["auto"]["patches_per_s"] / by["fp32"]["patches_per_s"],
        "bf16_over_fp32": by["bf16 (forced)"]["patches_per_s"] / by["fp32"]["patches_per_s"],
        "compiled_over_eager": {
            name: by[f"{name}, compiled"]["patches_per_s"] / by[name]["patches_per_s"]
            for name in ("auto", "fp32")
            if f"{name}, compiled" in by
        },
    }


# ------------------------------------------------------------------------------------- part B


def pipeline_part(args: argparse.Namespace, root: Path) -> dict:
    precision = runtime.resolve_precision("auto", CPU)
    n = args.steps
    configs = {
        "on-the-fly RandomPatches (full images)": make_config(
            args, root, "synthetic/train", samples_per_epoch=n * args.batch_size
        ),
        "PatchFolder (PNG patches)": make_config(args, root, "patches"),
    }
    loaders = {}
    for label, config in configs.items():
        sources = data.make_datasets(config)
        workers = config.training.num_workers if args.workers is None else args.workers
        loaders[label] = (
            data.make_loader(sources.train, args.batch_size, train=True, seed=0, num_workers=workers),
            workers,
        )
    trainer = Trainer(next(iter(configs.values())), precision)
    trainer.run(take(loaders[next(iter(loaders))][0], args.warmup))  # warm up on ready-made batches
    rows: dict[str, dict] = {}
    for label, (loader, workers) in loaders.items():
        timed = Interleaved([], loader)
        for repeat in range(args.repeats):
            data.set_epoch(loader, repeat)
            ready = take(loader, n)  # the very batches the loader is about to give again
            data.set_epoch(loader, repeat)
            pass_ = Interleaved(ready, loader)
            trainer.run(pass_)
            assert pass_.count == {"ready": n, "loader": n}, f"{label}: {pass_.count}, expected {n} of each"
            for field in ("wait", "compute", "count"):
                for kind in ("ready", "loader"):
                    getattr(timed, field)[kind] += getattr(pass_, field)[kind]
        step_loader, step_ready = timed.step("loader"), timed.step("ready")
        wait = timed.wait["loader"] / timed.count["loader"]
        rows[label] = {
            "source": label,
            "workers": workers,
            "steps": timed.count["loader"],
            "step_s_loader": step_loader,
            "step_s_ready": step_ready,
            "wait_s_per_step": wait,
            "share_waiting": wait / step_loader,
            "share_difference": (step_loader - step_ready) / step_loader,
            "within_target": wait / step_loader <= PIPELINE_TARGET,
        }
        print(f"  B {label}: waiting {100 * wait / step_loader:.1f} % of the step", flush=True)
    return {"rows": list(rows.values()), "precision": precision.name, "target": PIPELINE_TARGET}


# ------------------------------------------------------------------------------------- part C


def final_miou(last: Path, test: Path) -> dict:
    """The last epoch's validation mIoU as recorded, the saved model re-evaluated in this process,
    and its full-image mIoU on the unseen test images of ``test``."""
    state = checkpoints.load_checkpoint(last)
    config = config_from_dict(state["config"])
    sources = data.make_datasets(config)
    loader = data.make_loader(sources.val, config.training.batch_size, train=False, seed=0, num_workers=0)
    precision = runtime.resolve_precision(config.training.precision, CPU)
    _, matrix, _ = loops.evaluate(
        checkpoints.model_from_checkpoint(state), loader, None, config.data.num_classes, device=CPU, precision=precision
    )
    iou = matrix.iou()
    return {
        "recorded_miou": state["history"][-1].get("miou"),
        "reevaluated_miou": matrix.mean_iou(),
        "reevaluated_iou": [None if math.isnan(v) else float(v) for v in iou],
        "foreground_iou": float(iou[1:].mean()) if len(iou) > 1 and not math.isnan(iou[1:].mean()) else None,
        "val_windows": len(sources.val),
        "steps": state["step"],
        "test_miou": evaluate_folder(Segmenter.from_checkpoint(last), test, precision=config.inference.precision)[
            "miou"
        ],
    }


def ddp_part(args: argparse.Namespace, root: Path) -> dict:
    samples, epochs = args.ddp_samples, args.ddp_epochs
    runs = [
        ("1 process", 1, args.batch_size),
        ("1 process, global batch of DDP", 1, 2 * args.batch_size),
        ("2 processes (DDP, gloo)", 2, args.batch_size),
    ]
    rows = []
    for label, processes, batch in runs:
        run_name = f"ddp{processes}_b{batch}"
        config = make_config(
            args, root, "synthetic/train", samples_per_epoch=samples, epochs=epochs, run_name=run_name, batch_size=batch
        )
        config = config.merged({"model": {"base_width": args.ddp_width}})
        params = root / f"{run_name}.json"
        params.write_text(json.dumps(config.to_dict()))
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        if processes == 1:
            command = [sys.executable, "train.py"]
            threads = torch.get_num_threads()
        else:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(processes),
                "train.py",
            ]
            threads = max(1, torch.get_num_threads() // processes)
            env["OMP_NUM_THREADS"] = str(threads)
        command += ["--params", str(params), "--no-progress", "--json", "--overwrite"]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        summary = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")][-1]
        row = {
            "run": label,
            "processes": processes,
            "threads_per_process": threads,
            "batch_per_process": batch,
            "samples_per_epoch": samples,
            "epochs": epochs,
            "wall_s": wall,
            "train_s": summary["seconds"],
        }
        row.update(final_miou(Path(summary["last_checkpoint"]), root / "synthetic" / "test"))
        rows.append(row)
        print(
            f"  C {label}: final val mIoU {row['recorded_miou']:.4f} (re-evaluated {row['reevaluated_miou']:.4f}), "
            f"full-image test mIoU {row['test_miou']:.4f}, {wall:.0f} s",
            flush=True,
        )
    return {"rows": rows}


# ------------------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Training benchmark ({'quick' if report['settings']['quick'] else 'full'})",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads, {m['cpu_capability']}), "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average'])}. Model {report['settings']['model']} "
        f"({report['settings']['parameters']:,} parameters), batch {report['settings']['batch_size']}, "
        f"patch {report['settings']['patch_size']}.",
    ]
    if "precision" in report:
        a = report["precision"]
        lines += [
            "",
            f"## A. Precision (auto resolves to **{a['auto_resolves_to']}**"
            f"{' + channels_last' if a['auto_channels_last'] else ''}; native bf16: {a['cpu_has_fast_bf16']})",
            "",
            "| mode | resolved | channels_last | s / step | CPU s / step | patches / s | vs fp32 | warm-up s |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        fp32 = next(r for r in a["rows"] if r["mode"] == "fp32")["patches_per_s"]
        for r in a["rows"]:
            lines.append(
                f"| {r['mode']} | {r['resolved']} | {r['channels_last']} | {r['step_s']:.3f} | "
                f"{r['cpu_s_per_step']:.3f} | {r['patches_per_s']:.2f} | {r['patches_per_s'] / fp32:.2f} | "
                f"{r.get('warmup_s', 0.0):.1f} |"
            )
        lines += ["", f"auto / fp32 = {a['auto_over_fp32']:.2f}; forced bf16 / fp32 = {a['bf16_over_fp32']:.2f}."]
        compiled = a.get("compiled_over_eager", {})
        if compiled:
            lines.append(
                "torch.compile of the training step, compiled / eager: "
                + ", ".join(f"{name} {ratio:.2f}" for name, ratio in compiled.items())
                + " (the warm-up column holds the one-off compile)."
            )
        if a["auto_resolves_to"] == "fp32":
            lines.append(
                "On this CPU auto *is* fp32 (no native bf16), so auto / fp32 differs from 1 by noise only; "
                "the bf16 row is what auto avoids."
            )
    if "pipeline" in report:
        b = report["pipeline"]
        lines += [
            "",
            f"## B. Data pipeline ({b['precision']}; target: waiting <= {100 * b['target']:.0f} % of the step)",
            "",
            "| source | workers | s / step, loader-fed | s / step, ready tensors | wait s / step | share waiting | share by difference | <= target |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in b["rows"]:
            lines.append(
                f"| {r['source']} | {r['workers']} | {r['step_s_loader']:.3f} | {r['step_s_ready']:.3f} | "
                f"{r['wait_s_per_step']:.4f} | {100 * r['share_waiting']:.1f} % | {100 * r['share_difference']:.1f} % | "
                f"{'yes' if r['within_target'] else 'NO'} |"
            )
    if "ddp" in report:
        lines += [
            "",
            "## C. 2-process DDP vs 1 process (same samples per epoch, same epochs)",
            "",
            f"base_width {report['settings']['ddp_width']}, {report['settings']['ddp_samples']} samples per epoch, "
            f"{report['settings']['ddp_epochs']} epochs, on-the-fly patches from {report['settings']['images']} images; "
            f"validation: fixed windows of held-back images; test: full-image mIoU of the last checkpoint on "
            f"{report['settings']['test_images']} unseen images.",
            "",
            "| run | processes x threads | batch / process | steps / process | wall s | final val mIoU (recorded) | final val mIoU (re-evaluated, 1 process) | mean foreground IoU (re-evaluated) | full-image test mIoU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["ddp"]["rows"]:
            lines.append(
                f"| {r['run']} | {r['processes']} x {r['threads_per_process']} | {r['batch_per_process']} | {r['steps']} | "
                f"{r['wall_s']:.0f} | {r['recorded_miou']:.4f} | {r['reevaluated_miou']:.4f} | "
                f"{'n/a' if r['foreground_iou'] is None else format(r['foreground_iou'], '.4f')} | {r['test_miou']:.4f} |"
            )
        if all(not r["foreground_iou"] for r in report["ddp"]["rows"]):
            lines += [
                "",
                "No run learned any foreground (IoU 0 for every foreground class): the run is too short to "
                "compare accuracy; use the full settings.",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--params", default=str(REPO / "parameters.json"), help="settings file (model, batch, data generator)"
    )
    parser.add_argument("--batch-size", type=int, help="default: training.batch_size of --params")
    parser.add_argument("--patch-size", type=int, help="default: patches.patch_size of --params (48 with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default 8, 2 with --quick)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 3, 1 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed repeats, the fastest kept (default 3, 2 with --quick)")
    parser.add_argument("--images", type=int, help="synthetic full images to sample from (default 40, 8 with --quick)")
    parser.add_argument(
        "--patches-per-image", type=int, help="windows per image for the patch folder (default 10, 4 with --quick)"
    )
    parser.add_argument("--workers", type=int, help="DataLoader workers for part B (default: training.num_workers)")
    parser.add_argument("--skip-precision", action="store_true", help="skip part A")
    parser.add_argument("--no-compile", action="store_true", help="part A without the torch.compile rows")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip part B")
    parser.add_argument("--ddp", action="store_true", help="also part C: torchrun 2 processes vs 1 process")
    parser.add_argument("--ddp-samples", type=int, help="samples per epoch in part C (default 1000, 64 with --quick)")
    parser.add_argument("--ddp-epochs", type=int, help="epochs in part C (default 3, 1 with --quick)")
    parser.add_argument(
        "--test-images", type=int, help="unseen full images scored in part C (default 20, 2 with --quick)"
    )
    parser.add_argument(
        "--ddp-width", type=int, help="model.base_width in part C (default: that of --params, 8 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="few steps, smaller patches: about a minute")
    args = parser.parse_args()
    base = load_config(args.params)
    quick = args.quick
    defaults = dict(
        batch_size=base.training.batch_size,
        patch_size=48 if quick else base.patches.patch_size,
        steps=2 if quick else 8,
        warmup=1 if quick else 3,
        repeats=2 if quick else 3,
        images=8 if quick else 40,
        patches_per_image=4 if quick else 10,
        test_images=2 if quick else 20,
        ddp_samples=64 if quick else 1000,
        ddp_epochs=1 if quick else 3,
        ddp_width=8 if quick else base.model.base_width,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    report: dict = {
        "machine": machine(),
        "settings": {
            **{k: v for k, v in vars(args).items()},
            "model": base.model.to_dict(),
            "parameters": count_parameters(build_model(base.model, pretrained=False)),
        },
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        root = Path(tmp)
        make_data(args, root)
        if not args.skip_precision:
            report["precision"] = precision_part(args, root)
        if not args.skip_pipeline:
            report["pipeline"] = pipeline_part(args, root)
        if args.ddp:
            report["ddp"] = ddp_part(args, root)
    report["seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    written = save_results("training", report, text)
    print(f"\nwrote {written} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
