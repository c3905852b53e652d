"""Checkpoints written before the model family grew must rebuild the same network: the default
``ModelConfig()`` and an older ``model_config`` (no ``name`` nor any later key) give exactly the
``state_dict`` keys and shapes the U-Net had before (recorded from commit dea192b's code), so their
weights load unchanged. tests/test_checkpoints.py checks the outputs of such a file."""

import torch

from unet_patches.models import ModelConfig, UNet, build_model

OLDER_MODEL_CONFIG = {
    "in_channels": 1,
    "num_classes": 3,
    "base_width": 4,
    "depth": 2,
    "upsampling": "bilinear",
    "dropout": 0.0,
}

# key and shape ("" for a scalar), one per line, in state_dict order
OLDER_KEYS = """
inc.0.weight 4,1,3,3
inc.1.weight 4
inc.1.bias 4
inc.1.running_mean 4
inc.1.running_var 4
inc.1.num_batches_tracked
inc.3.weight 4,4,3,3
inc.4.weight 4
inc.4.bias 4
inc.4.running_mean 4
inc.4.running_var 4
inc.4.num_batches_tracked
downs.0.1.0.weight 8,4,3,3
downs.0.1.1.weight 8
downs.0.1.1.bias 8
downs.0.1.1.running_mean 8
downs.0.1.1.running_var 8
downs.0.1.1.num_batches_tracked
downs.0.1.3.weight 8,8,3,3
downs.0.1.4.weight 8
downs.0.1.4.bias 8
downs.0.1.4.running_mean 8
downs.0.1.4.running_var 8
downs.0.1.4.num_batches_tracked
downs.1.1.0.weight 16,8,3,3
downs.1.1.1.weight 16
downs.1.1.1.bias 16
downs.1.1.1.running_mean 16
downs.1.1.1.running_var 16
downs.1.1.1.num_batches_tracked
downs.1.1.3.weight 16,16,3,3
downs.1.1.4.weight 16
downs.1.1.4.bias 16
downs.1.1.4.running_mean 16
downs.1.1.4.running_var 16
downs.1.1.4.num_batches_tracked
ups.0.conv.0.weight 8,24,3,3
ups.0.conv.1.weight 8
ups.0.conv.1.bias 8
ups.0.conv.1.running_mean 8
ups.0.conv.1.running_var 8
ups.0.conv.1.num_batches_tracked
ups.0.conv.3.weight 8,8,3,3
ups.0.conv.4.weight 8
ups.0.conv.4.bias 8
ups.0.conv.4.running_mean 8
ups.0.conv.4.running_var 8
ups.0.conv.4.num_batches_tracked
ups.1.conv.0.weight 4,12,3,3
ups.1.conv.1.weight 4
ups.1.conv.1.bias 4
ups.1.conv.1.running_mean 4
ups.1.conv.1.running_var 4
ups.1.conv.1.num_batches_tracked
ups.1.conv.3.weight 4,4,3,3
ups.1.conv.4.weight 4
ups.1.conv.4.bias 4
ups.1.conv.4.running_mean 4
ups.1.conv.4.running_var 4
ups.1.conv.4.num_batches_tracked
outc.weight 3,4,1,1
outc.bias 3
"""

DEFAULT_KEYS = """
inc.0.weight 8,1,3,3
inc.1.weight 8
inc.1.bias 8
inc.1.running_mean 8
inc.1.running_var 8
inc.1.num_batches_tracked
inc.3.weight 8,8,3,3
inc.4.weight 8
inc.4.bias 8
inc.4.running_mean 8
inc.4.running_var 8
inc.4.num_batches_tracked
downs.0.1.0.weight 16,8,3,3
downs.0.1.1.weight 16
downs.0.1.1.bias 16
downs.0.1.1.running_mean 16
downs.0.1.1.running_var 16
downs.0.1.1.num_batches_tracked
downs.0.1.3.weight 16,16,3,3
downs.0.1.4.weight 16
downs.0.1.4.bias 16
downs.0.1.4.running_mean 16
downs.0.1.4.running_var 16
downs.0.1.4.num_batches_tracked
downs.1.1.0.weight 32,16,3,3
downs.1.1.1.weight 32
downs.1.1.1.bias 32
downs.1.1.1.running_mean 32
downs.1.1.1.running_var 32
downs.1.1.1.num_batches_tracked
downs.1.1.3.weight 32,32,3,3
downs.1.1.4.weight 32
downs.1.1.4.bias 32
downs.1.1.4.running_mean 32
downs.1.1.4.running_var 32
downs.1.1.4.num_batches_tracked
downs.2.1.0.weight 64,32,3,3
downs.2.1.1.weight 64
downs.2.1.1.bias 64
downs.2.1.1.running_mean 64
downs.2.1.1.running_var 64
downs.2.1.1.num_batches_tracked
downs.2.1.3.weight 64,64,3,3
downs.2.1.4.weight 64
downs.2.1.4.bias 64
downs.2.1.4.running_mean 64
downs.2.1.4.running_var 64
downs.2.1.4.num_batches_tracked
downs.3.1.0.weight 128,64,3,3
downs.3.1.1.weight 128
downs.3.1.1.bias 128
downs.3.1.1.running_mean 128
downs.3.1.1.running_var 128
downs.3.1.1.num_batches_tracked
downs.3.1.3.weight 128,128,3,3
downs.3.1.4.weight 128
downs.3.1.4.bias 128
downs.3.1.4.running_mean 128
downs.3.1.4.running_var 128
downs.3.1.4.num_batches_tracked
ups.0.conv.0.weight 64,192,3,3
ups.0.conv.1.weight 64
ups.0.conv.1.bias 64
ups.0.conv.1.running_mean 64
ups.0.conv.1.running_var 64
ups.0.conv.1.num_batches_tracked
ups.0.conv.3.weight 64,64,3,3
ups.0.conv.4.weight 64
ups.0.conv.4.bias 64
ups.0.conv.4.running_mean 64
ups.0.conv.4.running_var 64
ups.0.conv.4.num_batches_tracked
ups.1.conv.0.weight 32,96,3,3
ups.1.conv.1.weight 32
ups.1.conv.1.bias 32
ups.1.conv.1.running_mean 32
ups.1.conv.1.running_var 32
ups.1.conv.1.num_batches_tracked
ups.1.conv.3.weight 32,32,3,3
ups.1.conv.4.weight 32
ups.1.conv.4.bias 32
ups.1.conv.4.running_mean 32
ups.1.conv.4.running_var 32
ups.1.conv.4.num_batches_tracked
ups.2.conv.0.weight 16,48,3,3
ups.2.conv.1.weight 16
ups.2.conv.1.bias 16
ups.2.conv.1.running_mean 16
ups.2.conv.1.running_var 16
ups.2.conv.1.num_batches_tracked
ups.2.conv.3.weight 16,16,3,3
ups.2.conv.4.weight 16
ups.2.conv.4.bias 16
ups.2.conv.4.running_mean 16
ups.2.conv.4.running_var 16
ups.2.conv.4.num_batches_tracked
ups.3.conv.0.weight 8,24,3,3
ups.3.conv.1.weight 8
ups.3.conv.1.bias 8
ups.3.conv.1.running_mean 8
ups.3.conv.1.running_var 8
ups.3.conv.1.num_batches_tracked
ups.3.conv.3.weight 8,8,3,3
ups.3.conv.4.weight 8
ups.3.conv.4.bias 8
ups.3.conv.4.running_mean 8
ups.3.conv.4.running_var 8
ups.3.conv.4.num_batches_tracked
outc.weight 3,8,1,1
outc.bias 3
"""


def _keys(model: torch.nn.Module) -> list[str]:
    return [f"{key} {','.join(map(str, value.shape))}".rstrip() for key, value in model.state_dict().items()]


def test_an_older_model_config_rebuilds_the_same_state_dict_layout():
    model = build_model(OLDER_MODEL_CONFIG)
    assert isinstance(model, UNet) and model.config.name == "unet"
    assert _keys(model) == OLDER_KEYS.split("\n")[1:-1]


def test_the_default_model_config_is_the_same_unet_as_before():
    assert _keys(build_model(ModelConfig())) == DEFAULT_KEYS.split("\n")[1:-1]
    assert _keys(build_model(ModelConfig().to_dict())) == DEFAULT_KEYS.split("\n")[1:-1]


def test_defaults_of_the_new_settings_are_the_original_network():
    config = ModelConfig.from_dict(OLDER_MODEL_CONFIG)
    assert (config.downsampling, config.normalization, config.activation) == ("maxpool", "batch", "relu")
    assert config.encoder_weights is None
    # The same weights give the same outputs whether or not the new keys are spelled out.
    torch.manual_seed(0)
    implicit = build_model(OLDER_MODEL_CONFIG).eval()
    explicit = build_model(config.to_dict()).eval()
    explicit.load_state_dict(implicit.state_dict())
    x = torch.rand(2, 1, 37, 53)
    with torch.no_grad():
        assert torch.equal(implicit(x), explicit(x))
    modules = {type(m).__name__ for m in implicit.modules()}
    assert {"MaxPool2d", "BatchNorm2d", "ReLU"} <= modules and not {"LeakyReLU", "ConvTranspose2d"} & modules
