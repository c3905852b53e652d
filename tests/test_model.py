import pytest
import torch

from unet_patches.errors import UserError
from unet_patches.models import ModelConfig, UNet, build_model, count_parameters


@pytest.mark.parametrize("size", [(96, 96), (37, 53), (1, 1), (17, 100)])
@pytest.mark.parametrize("upsampling", ["bilinear", "nearest", "transpose"])
def test_any_input_size_gives_logits_of_the_same_size(size, upsampling):
    model = UNet(in_channels=2, num_classes=4, base_width=4, depth=3, upsampling=upsampling).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 2, *size))
    assert out.shape == (2, 4, *size)
    assert torch.isfinite(out).all()


def test_outputs_are_logits_not_probabilities():
    torch.manual_seed(0)
    model = UNet(base_width=4, depth=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32) * 10)
    # A sigmoid/softmax head would keep every value in [0, 1].
    assert out.min() < 0 or out.max() > 1


def test_width_and_depth_are_configurable():
    small, big = UNet(base_width=4, depth=2), UNet(base_width=8, depth=2)
    assert count_parameters(big) > 3 * count_parameters(small)
    assert ModelConfig(base_width=16, depth=4).widths == (16, 32, 64, 128, 256)
    # The original: base 64, 4 poolings, about 17 M parameters with bilinear upsampling.
    assert 15e6 < count_parameters(UNet(base_width=64, depth=4)) < 35e6


def test_build_model_from_dict_round_trip():
    config = ModelConfig(in_channels=3, num_classes=5, base_width=4, depth=2, upsampling="transpose")
    model = build_model(config.to_dict())
    assert model.config == config


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"base_width": 0}, "base_width"),
        ({"upsampling": "bicubic"}, "upsampling"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_config_raises_user_error(values, message):
    with pytest.raises(UserError, match=message):
        ModelConfig(**values)


def test_unknown_model_key_raises():
    with pytest.raises(UserError, match="widthh"):
        ModelConfig.from_dict({"widthh": 3})


def test_split_input_runs_a_block_on_two_maps_as_if_concatenated():
    from torch import nn

    from unet_patches.models.blocks import SplitInput, conv_norm_act

    torch.manual_seed(0)
    block = nn.Sequential(*conv_norm_act(5, 4, normalization="none")).eval()
    a, b = torch.rand(2, 2, 9, 11), torch.rand(2, 3, 9, 11)
    split = SplitInput(block, 2)
    with torch.no_grad():
        torch.testing.assert_close(split(a, b), block(torch.cat([a, b], dim=1)), rtol=1e-5, atol=1e-6)
    assert not SplitInput.fits(block, 5) and not SplitInput.fits(nn.Sequential(nn.ReLU()), 2)
    with pytest.raises(ValueError, match="plain convolution"):
        SplitInput(block, 0)
