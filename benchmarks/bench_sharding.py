"""Prediction beyond one process and one file: sharded jobs, and gigapixel inputs read lazily.

Every run is ``unet-patches predict`` in a fresh process, which reports its own peak resident memory
(``VmHWM``) on exit. The checkpoint is ``--checkpoint`` (default: the
demo's, ``checkpoints/demo/best.pt``; ``make demo`` makes it), run with ``--no-compile`` so that every
process runs the same network and the outputs can be compared bit for bit.

Part A (many files): ``--files`` synthetic images of ``--file-size`` pixels, PNG. One process with
  the machine's threads against two processes (``--shard 0/2`` and ``1/2`` started together, one
  thread each). Wall time, images per second, peak memory per process, outputs identical.
Part B (one huge image): a ``--huge`` x ``--huge`` tiled, compressed TIFF. One process (all threads,
  ``--format zarr``) against two processes splitting it by rows into one shared Zarr store.
Part C (gigapixel input): a ``--giga`` x ``--giga`` tiled, deflate-compressed OME-TIFF (not memory-
  mappable) predicted into Zarr and into a pyramidal OME-TIFF, against a 2048 x 2048 one of the same
  kind: peak memory and time per megapixel, and the ratio (target: peak memory <= 1.25x that of 2048).
Part D (the default command line): ``unet-patches predict CKPT IMAGE -o OUT`` and nothing else, so
  labels and a colour overlay PNG, on a tiled deflate TIFF and on a plain (strip, uncompressed) TIFF
  of 2048^2, ``--huge``^2 and ``--giga``^2: peak memory against the 2048^2 run of the same kind
  (target <= 1.25x; issue 30).

Run from the repository root:
    .venv/bin/python benchmarks/bench_sharding.py            # 200 files, 16384^2, 32768^2: ~15 minutes
    .venv/bin/python benchmarks/bench_sharding.py --quick    # 20 files, 4096^2, 8192^2
Results: markdown on stdout, JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine, save_results

# The child's own peak: VmHWM belongs to its address space, made anew by exec. (ru_maxrss does not do:
# Linux carries it over from the parent across fork and exec, so every child reported at least the
# parent's peak, which writing the big inputs had raised to about 1.1 GB.)
RUN = (
    "import sys\n"
    "from unet_patches.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
    "print('MAXRSS_KB', hwm, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def start(args: list[str], threads: int | None = None) -> subprocess.Popen:
    """``unet-patches ARGS`` in a fresh process (``threads``: its OMP/torch thread count)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> float:
    """Wait for ``process``; its peak resident memory in MiB. Raises if it failed."""
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"predict failed ({process.returncode}):\n{err[-3000:]}")
    line = next(line for line in err.splitlines() if line.startswith("MAXRSS_KB"))
    return int(line.split()[1]) / 1024.0


def timed(jobs: list[tuple[list[str], int | None]]) -> tuple[float, list[float]]:
    """Start the jobs together; wall seconds until the last ends, and each one's peak MiB."""
    begin = time.perf_counter()
    processes = [start(args, threads) for args, threads in jobs]
    peaks = [finish(p) for p in processes]
    return time.perf_counter() - begin, peaks


def synthetic(size: int, seed: int) -> np.ndarray:
    """A ``size`` x ``size`` uint8 image of the demo's kind (generated at 1024 and tiled when larger)."""
    from unet_patches.data.synthetic import SyntheticSpec, generate_sample

    tile = min(size, 1024)
    base = SyntheticSpec()
    scale = tile * tile / (base.height * base.width)
    counts = (max(1, round(base.lines[0] * scale)), max(1, round(base.lines[1] * scale)))
    image, _ = generate_sample(
        np.random.default_rng(seed), SyntheticSpec(height=tile, width=tile, lines=counts, ellipses=counts)
    )
    image = np.round(image * 255).astype(np.uint8)
    reps = -(-size // tile)
    return np.tile(image, (reps, reps))[:size, :size]


def write_tiled(path: Path, size: int, seed: int, ome: bool = False) -> None:
    """A tiled (512), deflate-compressed (Bigtiff when needed) TIFF of ``size`` x ``size`` built from
    1024-pixel tiles of a synthetic image, written tile by tile (never whole in memory)."""
    block = synthetic(min(size, 1024), seed)

    def tiles():
        for _ in range(-(-size // 512)):
            for x in range(-(-size // 512)):
                yield block[:512, (x % 2) * 512 : (x % 2) * 512 + 512]

    with tifffile.TiffWriter(path, bigtiff=size * size > 2**31, ome=ome) as tif:
        tif.write(tiles(), shape=(size, size), dtype=np.uint8, tile=(512, 512), compression="zlib")


def predict_args(checkpoint: str, inputs: list[str], out: Path, *flags: str) -> list[str]:
    """No overlays: a row-block shard writes none, and a full-size overlay PNG is work of its own."""
    return ["predict", checkpoint, *inputs, "-o", str(out), "--no-progress", "--no-compile", "--no-overlay", *flags]


def same_tree(a: Path, b: Path, pattern: str) -> bool:
    """Whether the files matching ``pattern`` under ``a`` and ``b`` are byte for byte the same."""
    files = sorted(p.relative_to(a) for p in a.rglob(pattern))
    return (
        bool(files)
        and files == sorted(p.relative_to(b) for p in b.rglob(pattern))
        and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    )


def same_zarr(a: Path, b: Path) -> bool:
    import zarr

    return bool(np.array_equal(zarr.open_array(str(a))[...], zarr.open_array(str(b))[...]))


def part_a(checkpoint: str, work: Path, files: int, size: int) -> dict:
    from PIL import Image

    folder = work / "files"
    folder.mkdir()
    for k in range(files):
        Image.fromarray(synthetic(size, 100 + k)).save(folder / f"img_{k:04d}.png")
    one, two = work / "a1", work / "a2"
    wall1, peaks1 = timed([(predict_args(checkpoint, [str(folder)], one), None)])
    jobs = [(predict_args(checkpoint, [str(folder)], two, "--shard", f"{i}/2"), 1) for i in range(2)]
    wall2, peaks2 = timed(jobs)
    return {
        "files": files,
        "size": size,
        "one_process": {"wall_s": wall1, "images_per_s": files / wall1, "peak_mb": peaks1},
        "two_processes": {"wall_s": wall2, "images_per_s": files / wall2, "peak_mb": peaks2},
        "speedup": wall1 / wall2,
        "identical": same_tree(one, two, "*_labels.png"),
    }


def part_b(checkpoint: str, work: Path, size: int) -> dict:
    image = work / "huge.tif"
    write_tiled(image, size, 7)
    one, two = work / "b1", work / "b2"
    wall1, peaks1 = timed([(predict_args(checkpoint, [str(image)], one, "--format", "zarr"), None)])
    jobs = [(predict_args(checkpoint, [str(image)], two, "--shard", f"{i}/2"), 1) for i in range(2)]
    wall2, peaks2 = timed(jobs)
    mpx = size * size / 1e6
    return {
        "size": size,
        "one_process": {"wall_s": wall1, "mpx_per_s": mpx / wall1, "peak_mb": peaks1},
        "two_processes": {"wall_s": wall2, "mpx_per_s": mpx / wall2, "peak_mb": peaks2},
        "speedup": wall1 / wall2,
        "identical": same_zarr(one / "huge_labels.zarr", two / "huge_labels.zarr"),
    }


def part_c(checkpoint: str, work: Path, size: int) -> dict:
    rows = {}
    for n in (2048, size):
        image = work / f"in_{n}.ome.tif"
        write_tiled(image, n, 11, ome=True)
        for fmt in ("zarr", "ome-tiff"):
            wall, peaks = timed(
                [(predict_args(checkpoint, [str(image)], work / f"c_{n}_{fmt}", "--format", fmt), None)]
            )
            rows[f"{n} {fmt}"] = {
                "size": n,
                "format": fmt,
                "wall_s": wall,
                "s_per_mpx": wall / (n * n / 1e6),
                "peak_mb": peaks[0],
            }
            shutil.rmtree(work / f"c_{n}_{fmt}")
        image.unlink()
    for fmt in ("zarr", "ome-tiff"):
        rows[f"{size} {fmt}"]["peak_vs_2048"] = rows[f"{size} {fmt}"]["peak_mb"] / rows[f"2048 {fmt}"]["peak_mb"]
    return rows


def write_plain(path: Path, size: int, seed: int) -> None:
    """An uncompressed TIFF of ``size`` x ``size`` in strips (BigTIFF when needed), written a band at a time."""
    block = synthetic(min(size, 1024), seed)
    rows = min(size, 1024)

    def bands():
        for _ in range(-(-size // rows)):
            yield np.tile(block, (1, -(-size // block.shape[1])))[:rows, :size]

    with tifffile.TiffWriter(path, bigtiff=size * size > 2**31) as tif:
        tif.write(bands(), shape=(size, size), dtype=np.uint8, rowsperstrip=rows)


def part_d(checkpoint: str, work: Path, sizes: list[int]) -> dict:
    rows = {}
    for kind, write in (("tiled deflate", write_tiled), ("plain", write_plain)):
        for n in sizes:
            image = work / f"d_{n}.tif"
            write(image, n, 13)
            out = work / f"d_{n}"
            wall, peaks = timed([(["predict", checkpoint, str(image), "-o", str(out), "--no-progress"], None)])
            rows[f"{kind} {n}"] = {"kind": kind, "size": n, "wall_s": wall, "peak_mb": peaks[0]}
            rows[f"{kind} {n}"]["outputs"] = sorted(p.name for p in out.iterdir())
            shutil.rmtree(out)
            image.unlink()
        for n in sizes:
            rows[f"{kind} {n}"]["peak_vs_2048"] = rows[f"{kind} {n}"]["peak_mb"] / rows[f"{kind} {sizes[0]}"]["peak_mb"]
    return rows


def report(results: dict) -> str:
    lines = [f"Machine: {results['machine']['cpu']}, flags {' '.join(results['machine']['cpu_flags'])}", ""]
    if "a" in results:
        a = results["a"]
        lines += [
            f"A. {a['files']} files of {a['size']}^2 (PNG), labels PNG:",
            "",
            "| run | wall (s) | images/s | peak memory per process (MiB) |",
            "|---|---|---|---|",
            f"| 1 process, all threads | {a['one_process']['wall_s']:.1f} | {a['one_process']['images_per_s']:.2f} | {', '.join(f'{p:.0f}' for p in a['one_process']['peak_mb'])} |",
            f"| 2 processes (--shard), 1 thread each | {a['two_processes']['wall_s']:.1f} | {a['two_processes']['images_per_s']:.2f} | {', '.join(f'{p:.0f}' for p in a['two_processes']['peak_mb'])} |",
            "",
            f"Speed-up {a['speedup']:.2f}x; outputs identical: {a['identical']}",
            "",
        ]
    if "b" in results:
        b = results["b"]
        lines += [
            f"B. one {b['size']}^2 image (tiled deflate TIFF), labels Zarr:",
            "",
            "| run | wall (s) | Mpx/s | peak memory per process (MiB) |",
            "|---|---|---|---|",
            f"| 1 process, all threads | {b['one_process']['wall_s']:.1f} | {b['one_process']['mpx_per_s']:.2f} | {', '.join(f'{p:.0f}' for p in b['one_process']['peak_mb'])} |",
            f"| 2 processes (rows), 1 thread each | {b['two_processes']['wall_s']:.1f} | {b['two_processes']['mpx_per_s']:.2f} | {', '.join(f'{p:.0f}' for p in b['two_processes']['peak_mb'])} |",
            "",
            f"Speed-up {b['speedup']:.2f}x; labels identical: {b['identical']}",
            "",
        ]
    if "c" in results:
        lines += [
            "C. tiled deflate OME-TIFF in (read through tifffile's Zarr store):",
            "",
            "| input | output | wall (s) | s per Mpx | peak memory (MiB) | peak vs 2048^2 |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["c"].values():
            ratio = f"{row['peak_vs_2048']:.2f}x" if "peak_vs_2048" in row else "-"
            lines.append(
                f"| {row['size']}^2 | {row['format']} | {row['wall_s']:.1f} | {row['s_per_mpx']:.3f} | {row['peak_mb']:.0f} | {ratio} |"
            )
    if "d" in results:
        lines += [
            "",
            "D. the default command line (labels and overlay PNG), peak memory against 2048^2 of the same kind:",
            "",
            "| input | size | outputs | wall (s) | peak memory (MiB) | peak vs 2048^2 |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["d"].values():
            lines.append(
                f"| {row['kind']} | {row['size']}^2 | {', '.join(row['outputs'])} | {row['wall_s']:.1f} "
                f"| {row['peak_mb']:.0f} | {row['peak_vs_2048']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo/best.pt")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--file-size", type=int, default=512)
    parser.add_argument("--huge", type=int, default=16384)
    parser.add_argument("--giga", type=int, default=32768)
    parser.add_argument("--parts", default="abcd", help="which parts to run (a, b, c, d)")
    parser.add_argument("--quick", action="store_true", help="20 files, 4096^2, 8192^2")
    parser.add_argument("--d-sizes", help="part D's sizes, comma-separated, the first the reference "
                        "(default: 2048, --huge, --giga)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.files, args.huge, args.giga = 20, 4096, 8192
    if not Path(args.checkpoint).is_file():
        print(f"{args.checkpoint}: not found; run make demo first (or pass --checkpoint)", file=sys.stderr)
        return 2
    results: dict = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory(
        dir=REPO / "benchmarks" / "results" if (REPO / "benchmarks" / "results").is_dir() else None
    ) as tmp:
        work = Path(tmp)
        if "a" in args.parts:
            results["a"] = part_a(args.checkpoint, work, args.files, args.file_size)
            print(report(results), flush=True)
        if "b" in args.parts:
            results["b"] = part_b(args.checkpoint, work, args.huge)
            (work / "huge.tif").unlink()
            print(report(results), flush=True)
        if "c" in args.parts:
            results["c"] = part_c(args.checkpoint, work, args.giga)
            print(report(results), flush=True)
        if "d" in args.parts:
            sizes = [int(n) for n in args.d_sizes.split(",")] if args.d_sizes else [2048, args.huge, args.giga]
            results["d"] = part_d(args.checkpoint, work, sizes)
    text = report(results)
    print(text)
    save_results("sharding", results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
