"""The MLflow export served for real: ``mlflow models serve`` on a free localhost port answers a good image
with ``predict``'s labels and per-class areas, a corrupt and an oversized image with HTTP 400 and a
message naming the problem, and keeps serving. Also the pyfunc model without a server, and refusals."""

import base64
import importlib.util
import io
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

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


def _load_bench_serving():
    """``benchmarks/bench_serving.py``: the server, the requests and the load test this file reuses."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench_serving()
png_bytes, huge_png_header = bench.png_bytes, bench.oversized_png

CONFIG = ModelConfig(name="unet", base_width=4, depth=2)


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


def post(url: str, images: list[bytes]) -> tuple[int, dict]:
    rows = [[base64.b64encode(data).decode("ascii")] for data in images]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_served_model_answers_good_bad_and_oversized_images(exported, tmp_path):
    segmenter, _, model_dir = exported
    with bench.served(model_dir, tmp_path / "server.log") as (base, _server):
        url = f"{base}/invocations"
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


@pytest.mark.slow
def test_the_server_under_load_from_8_clients_answers_every_request_as_expected(exported, tmp_path):
    """The load test of ``benchmarks/bench_serving.py`` in small: 8 clients, 24 requests of which a third
    are bad (corrupt, oversized, wrong content type, not JSON, a client hanging up half-way)."""
    _, root, model_dir = exported
    result = bench.run(model_dir, root / "best.pt", tmp_path, clients=8, count=24, sizes=[32, 64, 128], time_limit=300)
    failures = {kind: entry["failures"] for kind, entry in result["by_kind"].items() if entry["failures"]}
    assert result["all_ok"] and not failures, failures
    assert result["alive_after"]
    assert {"valid", "corrupt", "oversized", "content-type", "not-json", "hang-up"} <= set(result["by_kind"])
    assert result["server_peak_mb"]["max"] < 4096, result["server_peak_mb"]
