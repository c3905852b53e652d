import json

import pytest

from unet_patches.errors import UserError
from unet_patches.training.config import config_from_dict, default_config, load_config


def test_defaults_are_valid_and_shipped_file_loads(repo_root):
    assert default_config().training.optimizer == "sgd"
    shipped = load_config(repo_root / "parameters.json")
    assert shipped.model.num_classes == shipped.data.num_classes == 3


def test_shipped_file_names_every_setting(repo_root):
    """parameters.json holds every setting, so users can see and change all of them."""
    shipped = json.loads((repo_root / "parameters.json").read_text())
    defaults = default_config().to_dict()
    for section, values in defaults.items():
        assert section in shipped, section
        missing = set(values) - set(shipped[section])
        assert not missing, f"{section}: {missing}"


def test_file_values_override_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"training": {"batch_size": 4, "learning_rate": 0.5}}))
    config = load_config(path)
    assert config.training.batch_size == 4 and config.training.epochs == default_config().training.epochs
    config = load_config(path, {"training": {"batch_size": 16}})  # only the flags given are overrides
    assert config.training.batch_size == 16 and config.training.learning_rate == 0.5
    # Overrides are validated with the file's values, as one whole.
    with pytest.raises(UserError, match="training.batch_size = 0"):
        load_config(path, {"training": {"batch_size": 0}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"training": {"batchsize": 4}}, r"unknown key 'training.batchsize' \(did you mean 'batch_size'\?\)"),
        ({"trainng": {}}, "unknown key 'trainng'"),
        ({"training": {"batch_size": "8"}}, r"'training.batch_size' = '8': expected an integer"),
        ({"training": {"batch_size": 0}}, r"training.batch_size = 0: expected an integer >= 1"),
        ({"training": {"flips": 1}}, "expected true or false"),
        ({"training": {"learning_rate": -1}}, "learning_rate"),
        ({"training": {"optimizer": "sdg"}}, r"did you mean 'sgd'"),
        ({"training": {"loss": "dise"}}, "loss"),
        ({"training": {"class_weights": [1, 2]}}, "class_weights has 2 values"),
        ({"training": {"class_weights": "inverse"}}, "median_frequency"),
        ({"training": {"epochs": None}}, "training.epochs = null needs training.time_budget_minutes"),
        ({"inference": {"overlap": 1.0}}, r"inference.overlap = 1.0: expected a finite number in \[0.0, 1.0\)"),
        ({"inference": {"padding": "zeros"}}, r"inference.padding = 'zeros'.*reflect, constant, replicate"),
        ({"inference": {"blend": "gauss"}}, r"did you mean 'gaussian'"),
        ({"model": {"name": "unett"}}, r"model.name = 'unett'.*did you mean 'unet'"),
        (
            {"model": {"name": "segnet"}, "patches": {"patch_size": 80}},
            r"patch_size = 80: segnet needs sizes divisible by 32",
        ),
        ({"model": {"name": "segnet", "depth": 3}}, r"model.depth = 3 does not apply to segnet"),
        ({"model": {"num_classes": 4}}, "differ from data"),
        ({"synthetic": {"lines": [5, 1]}}, "low <= high"),
        ({"patches": {"patch_size": 4}}, "patch_size"),
        ({"data": {"class_names": ["a"]}}, "class_names"),
        ([], "expected a JSON object"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(values)


def test_comments_are_allowed(tmp_path):
    config = config_from_dict({"_comment": "hi", "training": {"_note": "x", "epochs": 3}})
    assert config.training.epochs == 3


def test_unreadable_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(bad)


def test_no_epoch_limit_with_a_time_budget():
    config = config_from_dict({"training": {"epochs": None, "time_budget_minutes": 10}})
    assert config.training.epochs is None
    # A None override stores null, like the file's null.
    budget = config_from_dict({"training": {"time_budget_minutes": 1}})
    assert budget.merged({"training": {"epochs": None}}).training.epochs is None


def test_code_defaults_are_the_shipped_file(repo_root):
    """One set of defaults: what the code assumes is what parameters.json says, key for key."""
    shipped = json.loads((repo_root / "parameters.json").read_text())
    shipped = {
        section: {k: v for k, v in values.items() if not k.startswith("_")}
        for section, values in shipped.items()
        if not section.startswith("_")
    }
    defaults = json.loads(json.dumps(default_config().to_dict()))  # tuples as lists, like JSON
    assert defaults == shipped


def test_inference_settings_are_predictor_options():
    from unet_patches.api import PredictionJob, Segmenter
    from unet_patches.data.preprocess import Preprocess

    from helpers import tiny_net

    options = default_config().inference.predictor_options()
    assert set(options) == set(default_config().to_dict()["inference"])  # every setting reaches the predictor
    segmenter = Segmenter(tiny_net(), 96, ("a", "b", "c"), Preprocess(in_channels=1, num_classes=3))
    predictor = PredictionJob(segmenter, [(1000, 200)], **options).predictor((1000, 200))
    assert (predictor.blend, predictor.padding, predictor.tta) == ("mean", "reflect", False)
    assert predictor.window == (368, 208) and predictor.strides == (368 - 48, 208 - 48)  # 200 rounded to 16s
    assert predictor.windows_per_batch == 32 * 96 * 96 // (368 * 208)


def test_each_consumer_takes_its_settings_as_one_bundle():
    """The command line and the demo call the data tools with these bundles, never with lists of their own."""
    import inspect

    from unet_patches.data.patches import extract_patches
    from unet_patches.data.synthetic import generate_dataset

    config = default_config()
    assert set(config.patch_options()) <= set(inspect.signature(extract_patches).parameters)
    assert config.patch_options()["preprocess"].num_classes == config.data.num_classes
    assert set(config.synthetic.dataset_options()) <= set(inspect.signature(generate_dataset).parameters)
    assert config.synthetic.dataset_options()["spec"] == config.synthetic.spec()
