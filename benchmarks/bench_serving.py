"""The model server under load (issue 30): ``mlflow models serve`` of an MLflow export, on 127.0.0.1 only,
taking a fixed, seeded mix of requests from several concurrent clients; it stops by itself.

The mix: valid PNG images of several sizes (``--sizes``), corrupt ones (cut short), oversized ones (a
header that claims 10000 x 6000 pixels, over the 50 Mpx limit), a wrong content type, a body that is
not JSON, and clients that send half a request and hang up. Checks: every valid request answers 200
with the labels that ``predict`` gives for that image; every bad one answers 4xx with its reason (400
from our model, 415 from MLflow for a content type it does not take); the server still answers a
valid request afterwards. Recorded: throughput and p50/p99 latency of the valid requests, and the
peak resident memory of the server's processes (``VmHWM`` of each, read from ``/proc`` before it stops).

Run from the repository root (needs the ``mlflow`` extra; ``make setup`` has it):
    .venv/bin/python benchmarks/bench_serving.py                           # 8 clients x 12 requests
    .venv/bin/python benchmarks/bench_serving.py --clients 16 --requests 12 --sizes 64,256,1024,4096
Results: markdown on stdout, JSON + markdown in benchmarks/results/. ``tests/test_serving.py`` runs
a small version (8 clients) as a slow test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_START_S = 180
REQUEST_TIMEOUT_S = 300


# ------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_dir: Path, log_path: Path, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow models serve`` of ``model_dir`` on a free 127.0.0.1 port, answering ``/ping``; yields
    its base URL and process, and stops it (and its workers) on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    # The server starts uvicorn by name: the environment's scripts must be on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + SERVER_START_S
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited with status {server.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not answer within {SERVER_START_S} s; see {log_path}")
                time.sleep(0.5)
            yield url, server
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 15)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (from ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def peak_memory_mb(root: int) -> dict[int, float]:
    """Peak resident memory (``VmHWM``, MiB) of each process of ``root``'s tree."""
    peaks = {}
    for pid in process_tree(root):
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            peaks[pid] = int(next(line.split()[1] for line in status if line.startswith("VmHWM"))) / 1024
    return peaks


# ------------------------------------------------------------------------------ requests


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def oversized_png(width: int = 10_000, height: int = 6_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def table_body(images: list[bytes]) -> bytes:
    rows = [[base64.b64encode(data).decode("ascii")] for data in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


@dataclass
class Request:
    """One request of the mix: what it sends and what it must get back."""

    kind: str  # valid, corrupt, oversized, content-type, not-json, hang-up
    body: bytes
    content_type: str = "application/json"
    image: int | None = None  # index of the valid image (its expected labels)
    expect: tuple[int, ...] = (200,)
    reason: str = ""  # a part of the message a refusal must carry


@dataclass
class Answer:
    kind: str
    status: int | None
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Mix:
    images: list[np.ndarray] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)


def make_mix(sizes: list[int], count: int, seed: int) -> Mix:
    """``count`` requests, a seeded shuffle: about two thirds valid images of ``sizes``, the rest each
    kind of bad request in turn."""
    rng = np.random.default_rng(seed)
    mix = Mix()
    for size in sizes:
        mix.images.append((rng.random((size, size)) * 255).astype(np.uint8))
    encoded = [png_bytes(image) for image in mix.images]
    bad = [
        Request("corrupt", table_body([encoded[0][:40]]), expect=(400,), reason="cannot read as an image"),
        Request("oversized", table_body([oversized_png()]), expect=(400,), reason="over the limit"),
        Request("content-type", b"image bytes", content_type="image/png", expect=(415,), reason="content type"),
        Request("not-json", b"{not json", expect=(400,), reason=""),
        Request("hang-up", table_body([encoded[-1]]), expect=(), reason=""),
    ]
    for k in range(count):
        if k % 3 == 2:
            mix.requests.append(bad[(k // 3) % len(bad)])
        else:
            index = int(rng.integers(len(sizes)))
            mix.requests.append(Request("valid", table_body([encoded[index]]), image=index))
    random.Random(seed).shuffle(mix.requests)
    return mix


def send(url: str, request: Request, expected: list[np.ndarray]) -> Answer:
    """Send one request; check its answer."""
    started = time.perf_counter()
    if request.kind == "hang-up":  # half the body, then the connection is closed
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            head = (
                f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(request.body)}\r\n\r\n"
            )
            conn.sendall(head.encode() + request.body[: len(request.body) // 2])
        return Answer(request.kind, None, time.perf_counter() - started, True)
    http = urllib.request.Request(
        url + "/invocations", data=request.body, headers={"Content-Type": request.content_type}
    )
    try:
        with urllib.request.urlopen(http, timeout=REQUEST_TIMEOUT_S) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return Answer(request.kind, None, time.perf_counter() - started, False, f"no answer: {exc}")
    seconds = time.perf_counter() - started
    if status not in request.expect:
        return Answer(request.kind, status, seconds, False, text[:300])
    if request.kind != "valid":
        ok = request.reason.lower() in text.lower()
        return Answer(request.kind, status, seconds, ok, "" if ok else f"no reason {request.reason!r}: {text[:300]}")
    (row,) = json.loads(text)["predictions"]
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["labels"]))))
    ok = labels.shape == expected[request.image].shape and bool(np.array_equal(labels, expected[request.image]))
    return Answer(request.kind, status, seconds, ok, "" if ok else "labels differ from predict's")


def load_test(url: str, mix: Mix, expected: list[np.ndarray], clients: int, time_limit: float) -> dict:
    """The mix from ``clients`` threads at once; stops when every request is answered or at
    ``time_limit`` seconds (those not sent by then are counted as not sent)."""
    deadline = time.monotonic() + time_limit
    answers: list[Answer] = []

    def client(requests: list[Request]) -> list[Answer]:
        done = []
        for request in requests:
            if time.monotonic() > deadline:
                break
            done.append(send(url, request, expected))
        return done

    shares = [mix.requests[k::clients] for k in range(clients)]
    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for part in pool.map(client, shares):
            answers.extend(part)
    wall = time.perf_counter() - begin
    valid = sorted(a.seconds for a in answers if a.kind == "valid")
    by_kind: dict[str, dict] = {}
    for a in answers:
        entry = by_kind.setdefault(a.kind, {"sent": 0, "ok": 0, "statuses": {}, "failures": []})
        entry["sent"] += 1
        entry["ok"] += int(a.ok)
        entry["statuses"][str(a.status)] = entry["statuses"].get(str(a.status), 0) + 1
        if not a.ok:
            entry["failures"].append(a.detail)
    return {
        "clients": clients,
        "requests": len(mix.requests),
        "answered": len(answers),
        "wall_s": wall,
        "valid_per_s": len(valid) / wall if wall else 0.0,
        "p50_s": float(np.percentile(valid, 50)) if valid else None,
        "p99_s": float(np.percentile(valid, 99)) if valid else None,
        "by_kind": by_kind,
        "all_ok": len(answers) == len(mix.requests) and all(a.ok for a in answers),
    }


def run(model_dir: Path, checkpoint: Path, work: Path, clients: int, count: int, sizes: list[int],
        seed: int = 0, time_limit: float = 900.0) -> dict:  # fmt: skip
    """The whole load test: expected labels from ``predict``, the server, the mix, a last valid request.

    The expected labels come from the copy of ``checkpoint`` inside the export, as the server loads
    it: under ``precision: auto`` an int8 network cached beside the original (``best.pt.int8/``)
    would give labels of its own."""
    from unet_patches.api import Segmenter, predict

    mix = make_mix(sizes, count, seed)
    served_copy = next(Path(model_dir).rglob(Path(checkpoint).name), Path(checkpoint))
    segmenter = Segmenter.from_checkpoint(served_copy)
    expected = [predict(segmenter, image) for image in mix.images]
    with served(model_dir, work / "server.log") as (url, server):
        result = load_test(url, mix, expected, clients, time_limit)
        last = send(url, Request("valid", table_body([png_bytes(mix.images[0])]), image=0), expected)
        result["alive_after"] = last.ok
        peaks = peak_memory_mb(server.pid)
    result["server_peak_mb"] = {"max": max(peaks.values()), "sum": sum(peaks.values()), "processes": len(peaks)}
    result["sizes"] = sizes
    return result


def report(result: dict, machine_line: str) -> str:
    lines = [
        machine_line,
        "",
        f"{result['clients']} clients, {result['requests']} requests (valid sizes {result['sizes']}), "
        f"all answered as expected: {result['all_ok']}; a valid request after the load: "
        f"{'200 with the right labels' if result['alive_after'] else 'FAILED'}",
        "",
        "| request | sent | as expected | statuses |",
        "|---|---:|---:|---|",
    ]
    for kind, entry in result["by_kind"].items():
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(entry["statuses"].items()))
        lines.append(f"| {kind} | {entry['sent']} | {entry['ok']} | {statuses} |")
    p50 = "-" if result["p50_s"] is None else f"{result['p50_s']:.2f}"
    p99 = "-" if result["p99_s"] is None else f"{result['p99_s']:.2f}"
    memory = result["server_peak_mb"]
    lines += [
        "",
        f"Valid requests: {result['valid_per_s']:.2f}/s over {result['wall_s']:.1f} s; latency p50 {p50} s, "
        f"p99 {p99} s. Server peak memory: {memory['max']:.0f} MiB in its largest process "
        f"({memory['sum']:.0f} MiB over its {memory['processes']} processes).",
    ]
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(HERE))
    from common import machine, save_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="default: a small U-Net written for the test")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96, help="requests in all")
    parser.add_argument("--sizes", default="64,256,512,1024", help="sides of the valid images")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds; requests not sent by then are not")
    args = parser.parse_args()
    from unet_patches.deploy.export import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else small_checkpoint(work / "best.pt")
        model_dir = export_checkpoint(checkpoint, work / "model", "mlflow")
        sizes = [int(s) for s in args.sizes.split(",")]
        result = run(model_dir, checkpoint, work, args.clients, args.requests, sizes, time_limit=args.time_limit)
    info = machine()
    text = report(result, f"Machine: {info['cpu']}, flags {' '.join(info['cpu_flags'])}")
    print(text)
    save_results("serving", {"machine": info, "args": vars(args), "result": result}, text)
    return 0 if result["all_ok"] and result["alive_after"] else 1


def small_checkpoint(path: Path) -> Path:
    """A small U-Net checkpoint (untrained weights: the load, not the masks, is measured)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import write_unet_checkpoint

    return write_unet_checkpoint(path)


if __name__ == "__main__":
    sys.exit(main())
