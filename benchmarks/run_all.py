"""Run every ``benchmarks/bench_*.py`` in turn, each in its own process, and report which failed.

    .venv/bin/python benchmarks/run_all.py            # each benchmark with its default arguments
    .venv/bin/python benchmarks/run_all.py --quick    # each with --quick
    .venv/bin/python benchmarks/run_all.py --only training tiling

Output is streamed as the benchmarks print it. The exit status is 0 when every benchmark exited
0, else 1 (all are still run); 130 when interrupted. ``make bench`` calls this script.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def discover(only: list[str] | None = None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(name in s.stem[len("bench_") :] for name in only)]
    return scripts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only benchmarks whose name (after bench_) contains NAME"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    scripts = discover(args.only)
    if args.list:
        print("\n".join(str(s.relative_to(REPO)) for s in scripts))
        return 0
    if not scripts:
        print(
            f"run_all: no benchmarks/bench_*.py{' matching ' + ' '.join(args.only) if args.only else ''}",
            file=sys.stderr,
        )
        return 1

    results: list[tuple[str, int, float]] = []
    for script in scripts:
        name = str(script.relative_to(REPO))
        command = [sys.executable, name] + (["--quick"] if args.quick else [])
        print(f"\n=== {' '.join(command[1:])} ===", flush=True)
        start = time.perf_counter()
        try:
            # stdout and stderr are inherited: the benchmark's output streams straight through.
            code = subprocess.call(command, cwd=REPO)
        except KeyboardInterrupt:
            print(f"\nrun_all: interrupted during {name}", file=sys.stderr)
            return 130
        seconds = time.perf_counter() - start
        results.append((name, code, seconds))
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit status {code})'} in {seconds:.0f} s ===", flush=True)

    failed = [name for name, code, _ in results if code != 0]
    print("\nsummary:")
    for name, code, seconds in results:
        print(f"  {'ok    ' if code == 0 else 'FAILED'} {name} ({seconds:.0f} s)")
    if failed:
        print(f"run_all: {len(failed)} of {len(results)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
