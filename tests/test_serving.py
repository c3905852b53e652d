"""The MLflow export served for real: ``mlflow models serve`` on a free localhost port answers a good image
with ``predict``'s labels and per-class areas, a corrupt and an oversized image with HTTP 400 and a
message naming the problem, and keeps serving. Also the pyfunc model without a server, and refusals."""

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image
from test_export import write_checkpoint

from unet_patches.api import predict
from unet_patches.deploy.export import export_checkpoint
from unet_patches.errors import UserError
from unet_patches.models import ModelConfig

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

CONFIG = ModelConfig(name="unet", base_width=4, depth=2)
SERVER_START_S = 120


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int = 10_000, height: int = 6_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data): refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def an_image(height: int = 50, width: int = 70) -> np.ndarray:
    return (np.random.default_rng(0).random((height, width)) * 255).astype(np.uint8)


def decode_labels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    segmenter = write_checkpoint(root / "best.pt", CONFIG)
    model_dir = export_checkpoint(root / "best.pt", root / "model", "mlflow")
    return segmenter, root, model_dir


def test_pyfunc_model_gives_predicts_labels_and_areas(exported):
    segmenter, _, model_dir = exported
    model = mlflow.pyfunc.load_model(str(model_dir))
    images = [an_image(), an_image(33, 101)]
    table = pd.DataFrame({"image": [png_bytes(images[0]), base64.b64encode(png_bytes(images[1])).decode()]})
    out = model.predict(table)
    assert list(out.columns) == ["labels", "height", "width", "area_class0", "area_class1", "area_class2"]
    for (_, row), image in zip(out.iterrows(), images):
        expected = predict(segmenter, image)
        np.testing.assert_array_equal(decode_labels(row["labels"]), expected)
        assert (row["height"], row["width"]) == image.shape
        counts = np.bincount(expected.ravel(), minlength=3)
        assert [row[f"area_class{c}"] for c in range(3)] == counts.tolist()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not an image", "row 0: cannot read as an image"),
        ("%%% not base64", "row 0: not valid base64"),
        (huge_png_header(), "row 0: 10000x6000 = 60000000 pixels is over the limit"),
    ],
)
def test_pyfunc_model_refuses_bad_images_with_an_invalid_parameter_error(exported, data, message):
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(str(exported[2]))
    with pytest.raises(MlflowException, match=message) as info:
        model.predict(pd.DataFrame({"image": [data]}))
    assert info.value.get_http_status_code() == 400


def test_export_refuses_an_existing_folder_and_logits(exported, tmp_path):
    _, root, model_dir = exported
    with pytest.raises(UserError, match="exists"):
        export_checkpoint(root / "best.pt", model_dir, "mlflow")
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match="not an MLflow model folder"):
        export_checkpoint(root / "best.pt", tmp_path / "notes", "mlflow", overwrite=True)
    with pytest.raises(UserError, match="label images"):
        export_checkpoint(root / "best.pt", tmp_path / "other", "mlflow", output="logits")
    again = export_checkpoint(root / "best.pt", tmp_path / "copy", "mlflow")
    assert export_checkpoint(root / "best.pt", again, "mlflow", overwrite=True) == again
    assert (again / "MLmodel").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, images: list[bytes]) -> tuple[int, dict]:
    rows = [[base64.b64encode(data).decode("ascii")] for data in images]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_ping(url: str, server: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with status {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url} within {SERVER_START_S} s; see {log}")


@pytest.mark.slow
def test_served_model_answers_good_bad_and_oversized_images(exported, tmp_path):
    segmenter, _, model_dir = exported
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(tmp_path / "server.log", "wb")
    # The server starts uvicorn by name: the environment's scripts must be on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_ping(f"http://127.0.0.1:{port}/ping", server, tmp_path / "server.log")
        url = f"http://127.0.0.1:{port}/invocations"
        image = an_image(61, 83)
        status, answer = post(url, [png_bytes(image)])
        assert status == 200, answer
        (row,) = answer["predictions"]
        np.testing.assert_array_equal(decode_labels(row["labels"]), predict(segmenter, image))
        assert sum(row[f"area_class{c}"] for c in range(3)) == image.size

        status, answer = post(url, [png_bytes(image)[:40]])
        assert status == 400 and "row 0: cannot read as an image" in answer["message"], answer
        status, answer = post(url, [huge_png_header()])
        assert status == 400 and "over the limit" in answer["message"], answer

        status, answer = post(url, [png_bytes(image), png_bytes(an_image(20, 30))])  # still serving
        assert status == 200 and len(answer["predictions"]) == 2
        np.testing.assert_array_equal(decode_labels(answer["predictions"][0]["labels"]), predict(segmenter, image))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.slow
def test_the_server_under_load_from_8_clients_answers_every_request_as_expected(exported, tmp_path):
    """The load test of ``benchmarks/bench_serving.py`` in small: 8 clients, 24 requests of which a third
    are bad (corrupt, oversized, wrong content type, not JSON, a client hanging up half-way)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    _, root, model_dir = exported
    result = bench.run(model_dir, root / "best.pt", tmp_path, clients=8, count=24, sizes=[32, 64, 128], time_limit=300)
    failures = {kind: entry["failures"] for kind, entry in result["by_kind"].items() if entry["failures"]}
    assert result["all_ok"] and not failures, failures
    assert result["alive_after"]
    assert {"valid", "corrupt", "oversized", "content-type", "not-json", "hang-up"} <= set(result["by_kind"])
    assert result["server_peak_mb"]["max"] < 4096, result["server_peak_mb"]
