"""Batch augmentation: the cost of ``augment.BatchAugmenter`` against one training step.

One process, on the CPU. The training step is the package's own (``loops.train_one_epoch`` over one
batch) on the model, loss, optimiser and batch size of the settings (the code defaults unless
``--params`` is given), at ``precision=auto`` as resolved on this machine, model and inputs in the
policy's layout, exactly as ``bench_training.py`` builds it. The augmenter runs on the same batch as
it comes out of the DataLoader (float32, contiguous), outside autocast, as training calls it.

Timed, interleaved so that all see the same background load (the order rotates every repeat):
one training step; the augmenter of ``--preset`` (default ``strong``); and each op alone at
probability 1. Reported: medians, and the augmenter's share of (step + augment) time, the figure
held to the target (< 10 %). The share of an op alone at p = 1 is an upper bound of what it costs
in a preset, where it runs on a fraction of the samples.

The images and masks are random (class blocks plus noise): the cost of every op is independent of
what the pixels show.

Run from the repository root:
    .venv/bin/python benchmarks/bench_augment.py            # 40 repeats, ~10 s on an idle 2-core machine
    .venv/bin/python benchmarks/bench_augment.py --quick    # 8 repeats, ~3 s
Results: a markdown table on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))
from unet_patches import runtime
from unet_patches.losses import build_loss
from unet_patches.models import build_model, count_parameters
from unet_patches.training import augment, loops, optim
from unet_patches.training.config import default_config, load_config

from common import machine, save_results

CPU = torch.device("cpu")
TARGET = 0.10


def make_batch(batch: int, channels: int, classes: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of class blocks (8 x 8 cells, upsampled), images = class / classes + noise, as a loader gives them."""
    cells = torch.randint(0, classes, (batch, 1, size // 8 + 1, size // 8 + 1)).float()
    masks = F.interpolate(cells, size=(size, size), mode="nearest")[:, 0].long()
    images = masks[:, None].float().div(classes).expand(-1, channels, -1, -1) + 0.1 * torch.randn(
        batch, channels, size, size
    )
    return images.contiguous(), masks


class Step:
    """One training step of the settings' model, as ``training.fit`` runs it (cf. bench_training.Trainer)."""

    def __init__(self, config, precision: runtime.Precision) -> None:
        t = config.training
        torch.manual_seed(t.seed)
        self.model = build_model(config.model, pretrained=False)
        if precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(t.loss, config.data.num_classes)
        self.optimizer = optim.build_optimizer(
            t.optimizer, self.model.parameters(), t.learning_rate, t.momentum, t.weight_decay
        )
        self.precision = precision

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        progress = optim.RunClock(total_steps=10**9)
        progress.start()
        loops.train_one_epoch(
            self.model,
            [(images, masks)],
            self.loss_fn,
            self.optimizer,
            progress,
            lambda fraction: None,
            device=CPU,
            precision=self.precision,
        )


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, config) -> dict:
    precision = runtime.resolve_precision("auto", CPU)
    step = Step(config, precision)
    images, masks = make_batch(args.batch_size, config.data.in_channels, config.data.num_classes, args.patch_size)
    preset = augment.probabilities(args.preset)
    tasks = {"training step": step, f"augment: {args.preset}": augment.BatchAugmenter(preset)}
    tasks.update({f"{op} alone, p = 1": augment.BatchAugmenter({op: 1.0}) for op in augment.AUGMENT_OPS})
    names = list(tasks)
    for _ in range(args.warmup):
        for name in names:
            tasks[name](images, masks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)  # rotate the order, so that no task always follows the same one
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(tasks[name], images, masks))
    step_s = statistics.median(times["training step"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        share = median / (step_s + median) if name != "training step" else None
        rows.append(
            {"task": name, "median_ms": 1000 * median, "all_ms": [1000 * t for t in times[name]], "share": share}
        )
        print(f"  {name}: {1000 * median:.2f} ms", flush=True)
    share = rows[1]["share"]
    return {
        "precision": precision.name,
        "channels_last": precision.channels_last,
        "preset": args.preset,
        "probabilities": preset,
        "elastic": {"spacing": augment.ELASTIC_SPACING, "pixels": augment.ELASTIC_PIXELS},
        "rows": rows,
        "share": share,
        "within_target": share < TARGET,
    }


def markdown(report: dict) -> str:
    m, s, r = report["machine"], report["settings"], report["result"]
    e = r["elastic"]
    lines = [
        f"# Augmentation benchmark ({'quick' if s['quick'] else 'full'})",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads, {m['cpu_capability']}), "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in report['load_average_at_end'])}. Model {s['model']} "
        f"({s['parameters']:,} parameters), batch {s['batch_size']} x {s['in_channels']} x {s['patch_size']} x "
        f"{s['patch_size']}, precision auto = {r['precision']}{' + channels_last' if r['channels_last'] else ''}; "
        f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up, medians.",
        "",
        f"Preset {r['preset']!r}: {', '.join(f'{op} {p:g}' for op, p in r['probabilities'].items())}. "
        f"Elastic: control points {e['spacing']} px apart, displacement std {e['pixels']} px.",
        "",
        f"| task | median ms | share of step + augment (target < {100 * TARGET:.0f} %) |",
        "|---|---:|---:|",
    ]
    for row in r["rows"]:
        share = "" if row["share"] is None else f"{100 * row['share']:.1f} %"
        lines.append(f"| {row['task']} | {row['median_ms']:.2f} | {share} |")
    verdict = "within" if r["within_target"] else "ABOVE"
    lines += ["", f"{r['preset']!r} takes {100 * r['share']:.1f} % of step + augment: {verdict} the target."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", help="settings file (model, loss, optimiser, batch); default: the code defaults")
    parser.add_argument("--batch-size", type=int, help="default: training.batch_size of the settings")
    parser.add_argument("--patch-size", type=int, help="default: patches.patch_size of the settings")
    parser.add_argument("--preset", default="strong", choices=augment.PRESETS.names, help="preset to time")
    parser.add_argument("--repeats", type=int, help="interleaved timed repeats (default 40, 8 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 3, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats: seconds")
    args = parser.parse_args()
    config = default_config() if args.params is None else load_config(args.params)
    defaults = dict(
        batch_size=config.training.batch_size,
        patch_size=config.patches.patch_size,
        repeats=8 if args.quick else 40,
        warmup=1 if args.quick else 3,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    report: dict = {
        "machine": machine(),
        "settings": {
            **vars(args),
            "in_channels": config.data.in_channels,
            "model": config.model.to_dict(),
            "parameters": count_parameters(build_model(config.model, pretrained=False)),
        },
    }
    report["result"] = measure(args, config)
    report["load_average_at_end"] = os.getloadavg()
    report["seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    written = save_results("augment", report, text)
    print(f"\nwrote {written} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
