"""The Python API: Segmenter / predict / evaluate_folder on a tiny trained checkpoint."""

import numpy as np
import pytest

from unet_patches import Segmenter, UserError, evaluate_folder, predict
from unet_patches.data.imageio import read_image
from unet_patches.training.run import fit

from helpers import small_dataset, tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    small_dataset(root / "synthetic")
    result = fit(tiny_config(root, "synthetic/train", epochs=1, run_name="api"), progress_bars=False)
    return root, result["best_checkpoint"]


def test_segmenter_needs_only_the_checkpoint(checkpoint):
    _, path = checkpoint
    model = Segmenter.from_checkpoint(path)
    assert not model.network.training
    assert model.patch_size == 32 and model.in_channels == 1 and len(model.class_names) == 3


def test_predict_preprocesses_like_the_cli(checkpoint):
    root, path = checkpoint
    model = Segmenter.from_checkpoint(path)
    raw = read_image(next((root / "synthetic" / "test" / "images").iterdir()))
    labels = predict(model, raw, precision="fp32")
    assert labels.shape == raw.shape[:2] and labels.dtype == np.uint8 and labels.max() < 3
    # uint16 and float versions of the same picture are the same input after scaling.
    as_float = raw.astype(np.float32) / 255
    assert np.array_equal(predict(model, as_float, precision="fp32"), labels)
    as_uint16 = raw.astype(np.uint16) * 257  # 255 * 257 == 65535
    assert np.array_equal(predict(model, as_uint16, precision="fp32"), labels)
    # An RGB copy of a gray image is averaged back to the same gray.
    rgb = np.repeat(raw[..., None], 3, axis=2)
    assert np.array_equal(predict(model, rgb, precision="fp32"), labels)
    labels2, probs = predict(model, raw, return_probs=True, precision="fp32")
    assert probs.shape == (3, *raw.shape) and np.allclose(probs.sum(0), 1, atol=1e-4)
    assert np.array_equal(probs.argmax(0), labels2)


def test_predict_any_size_including_smaller_than_a_window(checkpoint):
    _, path = checkpoint
    model = Segmenter.from_checkpoint(path)
    for shape in [(5, 7), (33, 100), (32, 32)]:
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        assert predict(model, image, precision="fp32").shape == shape


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.0, 1.0]], "numpy array"),
        (np.zeros((4, 4, 2, 2), np.float32), "not an image"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_predict_rejects_bad_arrays_with_user_error(checkpoint, bad, message):
    model = Segmenter.from_checkpoint(checkpoint[1])
    with pytest.raises(UserError, match=message):
        predict(model, bad)


def test_evaluate_folder_scores_the_test_images(checkpoint):
    root, path = checkpoint
    scores = evaluate_folder(Segmenter.from_checkpoint(path), root / "synthetic" / "test", precision="fp32")
    assert scores["images"] == 2 and 0 <= scores["miou"] <= 1
    assert set(scores["iou"]) == set(scores["dice"]) == {"class0", "class1", "class2"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_evaluation_scores_like_eager(checkpoint):
    root, path = checkpoint
    model = Segmenter.from_checkpoint(path)
    eager = evaluate_folder(model, root / "synthetic" / "test", precision="fp32")
    compiled = evaluate_folder(model, root / "synthetic" / "test", precision="fp32", compile=True)
    assert compiled["miou"] == pytest.approx(eager["miou"], abs=1e-3)
