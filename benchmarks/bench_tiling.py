"""Tiled inference: MONAI's sliding_window_inference against unet_patches.inference.tiling, same model, same image.

Part 1 (one process, same weights, same image):
  - MONAI ``sliding_window_inference``: float32, window 96, overlap 0.5, ``sw_batch_size`` 32,
    constant mode, under ``torch.no_grad`` with the model in eval mode - the way a user calls it on
    CPU. Its predictor is ``softmax(model(x))`` so that both tools average probabilities.
  - ours at the same window and overlap: float32 eager, ``precision=auto`` (bf16 on CPUs with
    hardware bf16, float32 elsewhere), and ``auto`` + ``compile``;
  - ours at the recommended fast settings (``--fast-window`` / ``--fast-overlap``, compiled);
  - with ``--checkpoint`` and the int8 extra: ours with the checkpoint's int8 network (OpenVINO + NNCF,
    built as ``precision: int8`` builds it; its GFLOP/s are shown against the bf16 peak).
  For each: image megapixels per second (wall and process-CPU time), ratio to MONAI, peak memory
  above the start of the run (sampled in one more run after the timed ones, so that the sampler does
  not slow them), argmax agreement with MONAI, the share of each timed run spent outside the forward
  passes, and the engine's overhead over the bare forward passes it makes (the same number of passes
  timed on ready-made batches).
  With ``--checkpoint`` (a trained model) also mIoU against the synthetic ground truth.

Part 2 (a fresh subprocess per size): the streamed path (TIFF in, label TIFF out) on synthetic
images of ``--flat-sizes``; time per megapixel and peak resident memory (VmHWM) per size.

Run from the repository root:
    .venv/bin/python benchmarks/bench_tiling.py            # full
    .venv/bin/python benchmarks/bench_tiling.py --quick    # about 2 minutes
Results: a markdown table on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_patches.data.preprocess import Preprocess
from unet_patches.files.plan import open_image, plan_outputs, write_outputs
from unet_patches.inference.tiling import TiledPredictor
from unet_patches.inference.tiling.sizing import plan_window
from unet_patches.models import UNet, model_cost, window_multiple

from common import PeakSampler, Timer, conv1x1_gflops, machine, matmul_gflops, peak_rss_mb, save_results

NUM_CLASSES = 3


# --------------------------------------------------------------------------------------- inputs


def synthetic_image(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` uint8 gray image and its mask, with the training data's shape density."""
    from unet_patches.data.synthetic import SyntheticSpec, generate_sample

    base = SyntheticSpec()
    scale = size * size / (base.height * base.width)
    counts = (max(1, round(base.lines[0] * scale)), max(1, round(base.lines[1] * scale)))
    spec = SyntheticSpec(height=size, width=size, lines=counts, ellipses=counts)
    image, mask = generate_sample(np.random.default_rng(seed), spec)
    return np.round(image * 255).astype(np.uint8), mask


def build_model(width: int, checkpoint: str | None) -> torch.nn.Module:
    """The trained model at ``checkpoint``, or a UNet of ``base_width=width`` with seeded random weights."""
    if checkpoint:
        from unet_patches.api import Segmenter

        return Segmenter.from_checkpoint(checkpoint).network
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=NUM_CLASSES, base_width=width)
    # Non-trivial BatchNorm statistics, so that folding them into the convolutions is exercised.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def miou(labels: np.ndarray, truth: np.ndarray, classes: int = NUM_CLASSES) -> float:
    confusion = np.bincount(truth.ravel().astype(np.int64) * classes + labels.ravel(), minlength=classes * classes)
    confusion = confusion.reshape(classes, classes).astype(np.float64)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


# --------------------------------------------------------------------------------------- part 1


def run_monai(model: torch.nn.Module, image: np.ndarray, passes: list[float]) -> np.ndarray:
    """MONAI as a user calls it; the time of each network call is appended to ``passes`` (the softmax
    after it is not: it counts as the tool's own time, as ours does)."""
    from monai.inferers import sliding_window_inference

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        logits = model(batch)
        passes.append(time.perf_counter() - start)
        return torch.softmax(logits, dim=1)

    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        out = sliding_window_inference(x, (96, 96), 32, predictor, overlap=0.5, mode="constant")
    return out[0].argmax(0).to(torch.uint8).numpy()


class PassTimer:
    """Wraps a predictor's ``run_network`` to record the duration of every forward pass."""

    def __init__(self, predictor: TiledPredictor) -> None:
        self.predictor, self.passes = predictor, []
        self.inner = predictor.run_network

    def __enter__(self) -> list[float]:
        def timed(batch: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = self.inner(batch)
            self.passes.append(time.perf_counter() - start)
            return out

        self.predictor.run_network = timed  # type: ignore[method-assign]
        return self.passes

    def __exit__(self, *exc: object) -> None:
        del self.predictor.run_network  # back to the class's method


def bare_forward_seconds(predictor: TiledPredictor, passes: int, last: int) -> float:
    """Wall time of ``passes`` forward passes alone, on ready-made batches shaped as the run's."""
    c = 1
    full = predictor.windows_per_batch * predictor.n_aug
    sizes = [full] * (passes - 1) + [full if predictor.compiled else last * predictor.n_aug]
    batches = {n: torch.rand(n, c, *predictor.window) for n in set(sizes)}
    start = time.perf_counter()
    for n in sizes:
        predictor.run_network(batches[n])
    return time.perf_counter() - start


def int8_predictor(checkpoint: str, options: dict) -> tuple[TiledPredictor | None, float]:
    """Our engine over the checkpoint's int8 network (OpenVINO + NNCF, as ``precision: int8`` builds it,
    on a copy of the checkpoint with int8 windows) and the seconds the build took; None without the
    int8 extra or when the accuracy guard refuses."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return None, 0.0
    from unet_patches.api import PredictionJob, Segmenter
    from unet_patches.errors import UserError
    from unet_patches.inference.tiling.sizing import WindowPlan

    from common import with_int8_windows

    copy_ = with_int8_windows(checkpoint, Path(tempfile.mkdtemp(prefix="bench-tiling-int8-")) / "best.pt")
    segmenter = Segmenter.from_checkpoint(copy_)
    options = dict(options)
    plan = WindowPlan(options.pop("window"), options.pop("overlap"), options.pop("batch_size"))
    start = time.perf_counter()
    try:  # built (and its guard run) as `--precision int8` does
        predictor = PredictionJob(segmenter, precision="int8", **options).predictor_of(plan)
    except UserError as exc:
        print(f"  int8 refused: {exc}", file=sys.stderr)
        return None, time.perf_counter() - start
    predictor.precision_label = "int8"  # type: ignore[attr-defined]
    return predictor, time.perf_counter() - start


def compare(args: argparse.Namespace) -> dict:
    model = build_model(args.width, args.checkpoint)
    params = sum(p.numel() for p in model.parameters())
    _, mflop_per_px = model_cost(model, 256, in_channels=1)
    # The roofline: the matrix peak of this machine for each precision (bf16 through a 2048^3 matmul,
    # fp32 the better of a matmul and a 1x1 convolution, which reaches oneDNN's fp32 peak on AMD
    # CPUs where torch.mm does not).
    fp32_peak = max(matmul_gflops(torch.float32, 2048), conv1x1_gflops(torch.float32))
    peaks = {"bf16": matmul_gflops(torch.bfloat16, 2048), "fp32": fp32_peak}
    raw, truth = synthetic_image(args.size, seed=7)
    image = (raw.astype(np.float32) / 255.0)[None]
    megapixels = args.size * args.size / 1e6
    monai_model = copy.deepcopy(model).eval()
    import monai.inferers  # noqa: F401  (imported here, not inside the first timed run)

    # inference defaults: window auto (planned for this image as PredictionJob.plan does), precision auto.
    grid = window_multiple(model.config) if hasattr(model, "config") else 16
    plan = plan_window((args.size, args.size), patch=96, grid=grid)
    auto = dict(window=plan.window, overlap=plan.overlap, batch_size=plan.batch_size)
    configs = {
        "ours defaults (window auto, precision auto)": dict(**auto, precision="auto"),
        "ours fp32, window auto": dict(**auto, precision="fp32"),
        "ours defaults + compile": dict(**auto, precision="auto", compile=True),
        "ours fp32 (same window)": dict(window=96, overlap=0.5, batch_size=32, precision="fp32"),
        "ours auto (same window)": dict(window=96, overlap=0.5, batch_size=32, precision="auto"),
        "ours auto+compile (same window)": dict(window=96, overlap=0.5, batch_size=32, precision="auto", compile=True),
        f"ours fast (window {args.fast_window}, overlap {args.fast_overlap}, compiled)": dict(
            window=args.fast_window,
            overlap=args.fast_overlap,
            batch_size=args.fast_batch,
            precision="auto",
            compile=True,
            blend="gaussian",
        ),
    }
    if args.no_compile:
        configs = {k: v for k, v in configs.items() if not v.get("compile")}
    predictors: dict[str, TiledPredictor] = {}
    warmup: dict[str, float] = {}
    for name, options in configs.items():
        predictor = TiledPredictor(model, **options)
        if predictor.precision.name == "fp32" and name.startswith("ours auto (same"):
            continue  # auto is float32 on this CPU: the same run as the fp32 row
        with Timer() as t:  # compiles (once) and warms oneDNN's caches
            predictor.forward_windows(
                np.random.rand(predictor.windows_per_batch, 1, *predictor.window).astype(np.float32)
            )
        warmup[name] = t.result.wall
        predictors[name] = predictor
    if args.checkpoint and not args.no_int8:
        int8, seconds = int8_predictor(args.checkpoint, auto)
        if int8 is not None:
            int8.forward_windows(np.random.rand(int8.windows_per_batch, 1, *int8.window).astype(np.float32))
            predictors["ours int8 (window auto)"], warmup["ours int8 (window auto)"] = int8, seconds
    with torch.no_grad():  # MONAI's warm-up: one batch
        monai_model(torch.rand(32, 1, 96, 96))

    rows: dict[str, dict] = {}
    labels: dict[str, np.ndarray] = {}
    pass_log: dict[str, list[list[float]]] = {}
    engine_log: dict[str, list[float]] = {}
    bare_log: dict[str, list[tuple[float, float]]] = {}
    inrun_log: dict[str, list[float]] = {}  # 1 - passes / wall of every repeat

    def run(predictor, passes: list[float]) -> np.ndarray:
        if predictor is None:
            return run_monai(monai_model, image, passes)
        with PassTimer(predictor) as timed:
            out = predictor.labels(image)
        passes.extend(timed)
        return out

    runners = [("MONAI", None), *predictors.items()]
    for repeat in range(args.repeats):
        # Interleaved, so that MONAI and ours share the machine's load as far as possible.
        for name, predictor in runners:
            passes: list[float] = []
            with Timer() as t:
                out = run(predictor, passes)
            pass_log.setdefault(name, []).append(list(passes))
            engine_log.setdefault(name, []).append(t.result.wall - sum(passes))
            inrun_log.setdefault(name, []).append(1.0 - sum(passes) / t.result.wall)
            if predictor is not None:
                # The same passes on ready-made batches, right after the run (same machine load).
                windows = predictor.count_windows((args.size, args.size))
                last = windows - (len(passes) - 1) * predictor.windows_per_batch
                bare = bare_forward_seconds(predictor, len(passes), last)
                bare_log.setdefault(name, []).append((bare, t.result.wall))
            best = rows.get(name)
            if best is None or t.result.wall < best["wall_s"]:
                rows[name] = {"wall_s": t.result.wall, "cpu_s": t.result.cpu}
            labels[name] = out
            print(
                f"  [{repeat + 1}/{args.repeats}] {name}: {t.result.wall:.1f} s (forward passes {sum(passes):.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    for name, predictor in runners:
        # Peak memory in a run of its own, after the timed ones: the sampler's thread (waking every
        # 10 ms) and its malloc_trim added about 3 ms outside the passes and 20 ms of wall time.
        with PeakSampler() as memory:
            run(predictor, [])
        rows[name]["peak_mb"] = memory.peak_mb

    for name, row in rows.items():
        # Quiet-machine estimate: each forward pass at its fastest over the repeats (the passes do
        # the same work in every repeat) plus the smallest time outside the passes.
        per_pass = np.min(np.array(pass_log[name]), axis=0)
        row["quiet_s"] = float(per_pass.sum() + min(engine_log[name]))
    baseline = rows["MONAI"]
    for name, row in rows.items():
        row["mpx_per_s"] = megapixels / row["wall_s"]
        row["quiet_mpx_per_s"] = megapixels / row["quiet_s"]
        row["ratio_wall"] = baseline["wall_s"] / row["wall_s"]
        row["ratio_cpu"] = baseline["cpu_s"] / row["cpu_s"]
        row["ratio_quiet"] = baseline["quiet_s"] / row["quiet_s"]
        row["agree_monai"] = float(np.mean(labels[name] == labels["MONAI"]))
        row["miou"] = miou(labels[name], truth) if args.checkpoint else None
        row["passes"] = len(pass_log[name][0])
        row["overheads_in_run"] = inrun_log[name]
        predictor = predictors.get(name)
        if predictor is not None:
            # Median over the repeats of 1 - bare / run, each bare timing taken right after its run.
            overheads = [1.0 - bare / wall for bare, wall in bare_log[name]]
            row.update(
                windows=predictor.count_windows((args.size, args.size)),
                bare_s=min(b for b, _ in bare_log[name]),
                overhead=float(np.median(overheads)),
                overheads=overheads,
                precision=getattr(predictor, "precision_label", predictor.precision.name),
                warmup_s=warmup[name],
            )
        else:
            row.update(windows=(-(-(args.size - 96) // 48) + 1) ** 2, precision="fp32")
        window = predictor.window if predictor is not None else (96, 96)
        gflop = row["windows"] * window[0] * window[1] * mflop_per_px / 1e3
        row["pass_gflops"] = gflop / float(np.min(np.array(pass_log[name]), axis=0).sum())
    width = model.config.base_width if hasattr(model, "config") else args.width
    return {
        "size": args.size,
        "megapixels": megapixels,
        "mflop_per_px": mflop_per_px,
        "peaks": peaks,
        "auto_plan": {"window": plan.window, "overlap": plan.overlap, "batch_size": plan.batch_size},
        "model_width": width,
        "parameters": params,
        "checkpoint": args.checkpoint,
        "rows": rows,
    }


def precision_check(args: argparse.Namespace) -> dict:
    """Argmax agreement of bf16 autocast with float32 on a crop (bf16 is emulated, hence slow, on
    CPUs without hardware bf16, so the crop is small there)."""
    model = build_model(args.width, args.checkpoint)
    raw, _ = synthetic_image(args.precision_size, seed=5)
    image = (raw.astype(np.float32) / 255.0)[None]
    out: dict = {"size": args.precision_size}
    reference = None
    for precision in ("fp32", "bf16"):
        predictor = TiledPredictor(model, 96, 0.5, batch_size=32, precision=precision)
        with Timer() as t:
            labels, probs = predictor.labels(image, return_probs=True)
        if reference is None:
            reference = (labels, probs)
        out[precision] = {
            "wall_s": t.result.wall,
            "agree_fp32": float(np.mean(labels == reference[0])),
            "max_prob_diff": float(np.abs(probs - reference[1]).max()),
        }
        print(f"  precision {precision}: {t.result.wall:.1f} s", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------------------- part 2


def child_stream(args: argparse.Namespace) -> None:
    """Subprocess: stream one TIFF to a label TIFF with the fast settings; print one JSON line."""
    model = build_model(args.flat_width, args.checkpoint)
    predictor = TiledPredictor(
        model,
        args.fast_window,
        args.fast_overlap,
        batch_size=args.fast_batch,
        precision="auto",
        compile=not args.no_compile,
        blend="gaussian",
    )
    with Timer() as warm:
        predictor.forward_windows(np.random.rand(predictor.windows_per_batch, 1, *predictor.window).astype(np.float32))
    ready_rss = peak_rss_mb()
    with PassTimer(predictor) as passes, Timer() as t:
        (plan,) = plan_outputs(
            [Path(args.child_tiff)], args.child_out, overlay=False, probs=False, overwrite=True, stream_threshold_px=0
        )
        with open_image(plan.image, Preprocess(normalize="range"), plan.large) as source:
            write_outputs(predictor.bands(source), source, plan.outputs, plan.format)
    engine = t.result.wall - sum(passes)
    print(
        json.dumps(
            {
                "wall_s": t.result.wall,
                "cpu_s": t.result.cpu,
                "warmup_s": warm.result.wall,
                "passes": len(passes),
                "forward_s": sum(passes),
                "engine_s": engine,
                "median_pass_s": float(np.median(passes)),
                "steady_s": float(np.median(passes)) * len(passes) + engine,
                "quiet_s": float(np.percentile(passes, 10)) * len(passes) + engine,
                "peak_rss_mb": peak_rss_mb(),
                "ready_rss_mb": ready_rss,
            }
        )
    )


def flatness(args: argparse.Namespace) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as tmp:
        for size in args.flat_sizes:
            raw, _ = synthetic_image(size, seed=11)
            path = Path(tmp) / f"synthetic_{size}.tif"
            tifffile.imwrite(path, raw)
            del raw
            command = [
                sys.executable,
                __file__,
                "--child-tiff",
                str(path),
                "--child-out",
                str(Path(tmp) / "out"),
                "--flat-width",
                str(args.flat_width),
                "--fast-window",
                str(args.fast_window),
                "--fast-overlap",
                str(args.fast_overlap),
                "--fast-batch",
                str(args.fast_batch),
            ]
            if args.no_compile:
                command.append("--no-compile")
            if args.checkpoint:
                command += ["--checkpoint", args.checkpoint]
            row: dict = {}
            for repeat in range(args.flat_repeats):
                print(
                    f"  streaming {size}x{size} in a fresh process ({repeat + 1}/{args.flat_repeats}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"    {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
                if not row or run["wall_s"] < row["wall_s"]:
                    row = {**run, "peak_rss_mb": max(run["peak_rss_mb"], row.get("peak_rss_mb", 0))}
                else:
                    row["peak_rss_mb"] = max(run["peak_rss_mb"], row["peak_rss_mb"])
            row["megapixels"] = size * size / 1e6
            row["s_per_mpx"] = row["wall_s"] / row["megapixels"]
            row["cpu_s_per_mpx"] = row["cpu_s"] / row["megapixels"]
            row["steady_s_per_mpx"] = row["steady_s"] / row["megapixels"]
            row["quiet_s_per_mpx"] = row["quiet_s"] / row["megapixels"]
            results[size] = row
            path.unlink()
    sizes = sorted(results)
    small, large = results[sizes[0]], results[sizes[-1]]
    return {
        "model_width": args.flat_width,
        "sizes": results,
        "time_ratio": large["s_per_mpx"] / small["s_per_mpx"],
        "steady_time_ratio": large["steady_s_per_mpx"] / small["steady_s_per_mpx"],
        "quiet_time_ratio": large["quiet_s_per_mpx"] / small["quiet_s_per_mpx"],
        "cpu_time_ratio": large["cpu_s_per_mpx"] / small["cpu_s_per_mpx"],
        "memory_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
    }


# --------------------------------------------------------------------------------------- report


def _median_range(fractions: list[float]) -> str:
    """``10.4 % (9.1-11.0)``: the median and the range of fractions over the repeats."""
    low, high = 100 * min(fractions), 100 * max(fractions)
    return f"{100 * float(np.median(fractions)):.1f} % ({low:.1f}-{high:.1f})"


def markdown(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads, "
        f"capability {m['cpu_capability']}), matmul {m['matmul_gflops_fp32']} GFLOP/s fp32, "
        f"{m['matmul_gflops_bf16']} GFLOP/s bf16; load average at start {tuple(round(v, 2) for v in m['load_average'])}"
    )
    if "compare" in report:
        c = report["compare"]
        lines += [
            "",
            f"Image {c['size']}x{c['size']} ({c['megapixels']:.2f} Mpx), UNet base_width={c['model_width']} "
            f"({c['parameters'] / 1e6:.2f} M parameters){', checkpoint ' + c['checkpoint'] if c['checkpoint'] else ', random weights'}",
            "",
            f"Peaks (roofline): bf16 {c['peaks']['bf16']:.0f} GFLOP/s (2048^3 matmul), fp32 {c['peaks']['fp32']:.0f} "
            f"GFLOP/s (the better of a 2048^3 matmul and a 1x1 convolution); the model {c['mflop_per_px']:.4f} MFLOP per pixel; window auto here: "
            f"{c['auto_plan']}; CPU flags {' '.join(m.get('cpu_flags', []))}",
            "",
            "| run | precision | windows (passes) | Mpx/s (best wall) | x MONAI (wall) | x MONAI (CPU time) "
            "| Mpx/s (quiet est.) | x MONAI (quiet est.) | passes GFLOP/s (% of peak) | peak memory (MiB) | argmax = MONAI "
            "| overhead in run (median, range over the repeats) | overhead vs ready-made batches | mIoU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in c["rows"].items():
            overhead = f"{100 * r['overhead']:.1f} %" if "overhead" in r else "-"
            miou_text = f"{r['miou']:.4f}" if r.get("miou") is not None else "n/a"
            peak = "bf16" if r["precision"] in ("bf16", "fp16", "int8") else "fp32"  # int8: against bf16's
            lines.append(
                f"| {name} | {r['precision']} | {r['windows']} ({r['passes']}) | {r['mpx_per_s']:.4f} | "
                f"{r['ratio_wall']:.2f} | {r['ratio_cpu']:.2f} | {r['quiet_mpx_per_s']:.4f} | "
                f"{r['ratio_quiet']:.2f} | {r['pass_gflops']:.0f} ({100 * r['pass_gflops'] / c['peaks'][peak]:.0f} %) | "
                f"{r['peak_mb']:.0f} | {100 * r['agree_monai']:.3f} % | "
                f"{_median_range(r['overheads_in_run'])} | {overhead} | {miou_text} |"
            )
        warm = {k: v["warmup_s"] for k, v in c["rows"].items() if "warmup_s" in v}
        lines.append("")
        lines.append(
            "One-off warm-up (compile; for int8 the build: convert, calibrate, guard) seconds, not in the times above: "
            + ", ".join(f"{k}: {v:.1f}" for k, v in warm.items())
        )
    if "precision" in report:
        p = report["precision"]
        lines += [
            "",
            f"bf16 autocast against float32, {p['size']}x{p['size']} crop, same model, window 96, overlap 0.5: "
            f"argmax agreement {100 * p['bf16']['agree_fp32']:.3f} %, largest probability difference "
            f"{p['bf16']['max_prob_diff']:.4f}; time {p['bf16']['wall_s']:.1f} s (bf16) vs {p['fp32']['wall_s']:.1f} s (fp32)",
        ]
    if "flatness" in report:
        f = report["flatness"]
        lines += [
            "",
            f"Streamed TIFF -> label TIFF, fast settings, UNet base_width={f['model_width']}, fresh process per size",
            "",
            "| size | Mpx | passes | wall s | s per Mpx | CPU s per Mpx | s per Mpx, passes at median "
            "| s per Mpx, passes at 10th percentile | engine s outside passes | peak RSS (MiB) | RSS after warm-up (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size, r in f["sizes"].items():
            lines.append(
                f"| {size}x{size} | {r['megapixels']:.1f} | {r['passes']} | {r['wall_s']:.1f} | "
                f"{r['s_per_mpx']:.3f} | {r['cpu_s_per_mpx']:.3f} | {r['steady_s_per_mpx']:.3f} | "
                f"{r['quiet_s_per_mpx']:.3f} | {r['engine_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['ready_rss_mb']:.0f} |"
            )
        lines += [
            "",
            f"Time per Mpx, largest / smallest: {f['time_ratio']:.3f} (wall), {f['cpu_time_ratio']:.3f} (CPU), "
            f"{f['steady_time_ratio']:.3f} (passes at median), {f['quiet_time_ratio']:.3f} (passes at 10th percentile); peak RSS largest / smallest: {f['memory_ratio']:.3f}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side for the MONAI comparison")
    parser.add_argument("--width", type=int, default=32, help="UNet base_width for the comparison")
    parser.add_argument("--checkpoint", help="trained checkpoint (gives mIoU against ground truth)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per run (best is kept)")
    parser.add_argument("--flat-sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--flat-width", type=int, default=8, help="UNet base_width for the streaming runs")
    parser.add_argument("--flat-repeats", type=int, default=1, help="fresh processes per size (best is kept)")
    parser.add_argument("--fast-window", type=int, default=256)
    parser.add_argument("--fast-overlap", type=float, default=0.25)
    parser.add_argument("--fast-batch", type=int, default=4)
    parser.add_argument(
        "--precision-size", type=int, default=256, help="image side for the bf16-vs-fp32 agreement check (0 skips it)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile everywhere")
    parser.add_argument(
        "--no-int8", action="store_true", help="skip the int8 row (needs --checkpoint and the int8 extra)"
    )
    parser.add_argument("--skip-monai", action="store_true", help="skip part 1")
    parser.add_argument("--skip-flat", action="store_true", help="skip part 2")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (about 2 minutes)")
    parser.add_argument("--render", metavar="JSON", help="print the markdown of a saved report and exit")
    parser.add_argument("--child-tiff", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_tiff:
        child_stream(args)
        return
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    if args.quick:
        args.size, args.repeats, args.flat_sizes = 384, 1, [512, 1024]
        args.precision_size = min(args.precision_size, 128)

    report: dict = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.skip_monai:
        report["compare"] = compare(args)
    if args.precision_size:
        report["precision"] = precision_check(args)
    if not args.skip_flat:
        report["flatness"] = flatness(args)
    text = markdown(report)
    print(text)
    save_results("tiling", report, text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
