"""Pretrained VGG-16 encoder weights from a local file in torchvision's state-dict layout, tested with
small fake files built here (torchvision's indices, the widths scaled down to base_width 4)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from unet_patches.errors import UserError
from unet_patches.models import ModelConfig, build_model, load_encoder_weights
from unet_patches.models import vgg as vgg_module

# Where torchvision's vgg16 / vgg16_bn keep their 13 convolutions in ``features``.
CONV_INDICES = {
    False: [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    True: [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40],
}
WIDTHS = [1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 8]  # output width of each convolution / base
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def fake_vgg16(base: int = 4, batch_norm: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    for index, factor in zip(CONV_INDICES[batch_norm], WIDTHS):
        width = base * factor
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=g) * 0.2
        state[f"features.{index}.bias"] = torch.randn(width, generator=g) * 0.1
        if batch_norm:
            bn = f"features.{index + 1}"
            state[f"{bn}.weight"] = 1 + 0.1 * torch.randn(width, generator=g)
            state[f"{bn}.bias"] = 0.1 * torch.randn(width, generator=g)
            state[f"{bn}.running_mean"] = 0.1 * torch.randn(width, generator=g)
            state[f"{bn}.running_var"] = 1 + torch.rand(width, generator=g)
            state[f"{bn}.num_batches_tracked"] = torch.tensor(100)
        channels = width
    state["classifier.0.weight"] = torch.zeros(10, 8 * base)  # ignored
    return state


def _save(tmp_path, state, name="vgg16.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_the_model_features_have_torchvision_indices():
    for batch_norm in (False, True):
        config = ModelConfig(name="vgg16_unet", base_width=4, normalization="batch" if batch_norm else "none")
        keys = set(build_model(config).features.state_dict())
        expected = {k[len("features.") :] for k in fake_vgg16(batch_norm=batch_norm) if k.startswith("features.")}
        assert keys == expected == vgg_module.layout_keys(batch_norm) | {k for k in keys if "tracked" in k}


@pytest.mark.parametrize("name", ["vgg16_unet", "segnet"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_weights_load_key_for_key(tmp_path, name, batch_norm):
    state = fake_vgg16(batch_norm=batch_norm)
    path = _save(tmp_path, state)
    normalization = "batch" if batch_norm else "none"
    config = ModelConfig(name=name, in_channels=3, base_width=4, normalization=normalization, encoder_weights=str(path))
    model = build_model(config)
    loaded = model.features.state_dict()
    for key, value in state.items():
        if key.startswith("features.") and not key.startswith("features.0."):
            torch.testing.assert_close(loaded[key[len("features.") :]], value)
    # Rebuilding from a checkpoint's config does not read the file.
    path.unlink()
    assert build_model(config.to_dict(), pretrained=False).config == config
    with pytest.raises(UserError, match="file not found"):
        build_model(config)


def _first_conv_interior(model, x):
    with torch.no_grad():
        return model.features[0](x)[..., 1:-1, 1:-1]


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4])
def test_the_first_convolution_takes_images_in_0_1_with_any_channel_count(tmp_path, in_channels):
    """torchvision's weights expect ImageNet-normalised RGB; folded in, the first convolution on a
    [0, 1] image (C equal channels unless RGB) gives what VGG gives on the normalised RGB image."""
    state = fake_vgg16()
    model = build_model(ModelConfig(name="vgg16_unet", in_channels=in_channels, base_width=4))
    load_encoder_weights(model, _save(tmp_path, state))
    rgb = torch.rand(2, 3, 12, 14)
    if in_channels != 3:
        rgb = rgb[:, :1].expand(-1, 3, -1, -1)
    x = rgb if in_channels == 3 else rgb[:, :1].expand(-1, in_channels, -1, -1)
    with torch.no_grad():
        expected = F.conv2d((rgb - MEAN) / STD, state["features.0.weight"], state["features.0.bias"], padding=1)
    torch.testing.assert_close(_first_conv_interior(model, x), expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)


def test_pretrained_weights_change_the_output(tmp_path):
    config = ModelConfig(name="vgg16_unet", in_channels=1, num_classes=2, base_width=4)
    torch.manual_seed(0)
    random = build_model(config).eval()
    torch.manual_seed(0)
    path = _save(tmp_path, fake_vgg16())
    pretrained = build_model(ModelConfig(**{**config.to_dict(), "encoder_weights": str(path)})).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(random(x), pretrained(x))
        assert torch.isfinite(pretrained(x)).all()


def _bad_files(tmp_path):
    few = {k: v for k, v in fake_vgg16().items() if k.startswith(("features.0.", "features.1.", "classifier"))}
    vgg19 = {**fake_vgg16(), "features.44.weight": torch.zeros(32, 32, 3, 3), "features.44.bias": torch.zeros(32)}
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    return [
        (tmp_path / "missing.pt", "model.encoder_weights = '.*missing.pt': file not found"),
        (corrupt, "corrupt.pt: not a readable PyTorch state dict"),
        (_save(tmp_path, [1, 2], "list.pt"), "list.pt: holds a list, not a state dict"),
        (_save(tmp_path, {"weight": torch.zeros(1)}, "other.pt"), r"other.pt: not a VGG-16 state dict \(no 'features"),
        (_save(tmp_path, few, "few.pt"), r"few.pt: not torchvision's vgg16_bn layout \(missing features.10.bias\)"),
        (_save(tmp_path, vgg19, "vgg19.pt"), r"vgg19.pt: not torchvision's vgg16_bn layout \(unexpected features.44"),
        (_save(tmp_path, fake_vgg16(batch_norm=False), "plain.pt"), "holds VGG-16 \\(without BatchNorm\\).*'none'"),
        (
            _save(tmp_path, fake_vgg16(base=8), "wide.pt"),
            "8 filters but model.base_width = 4; set model.base_width = 8",
        ),
    ]


def test_a_bad_weights_file_is_a_user_error_naming_it(tmp_path):
    model = build_model(ModelConfig(name="vgg16_unet", base_width=4))
    for path, message in _bad_files(tmp_path):
        with pytest.raises(UserError, match=message):
            load_encoder_weights(model, path)
    with pytest.raises(UserError, match="holds VGG-16-BN \\(with BatchNorm\\).*set model.normalization = 'batch'"):
        load_encoder_weights(
            build_model(ModelConfig(name="segnet", base_width=4, normalization="none")),
            _save(tmp_path, fake_vgg16(), "bn.pt"),
        )


def test_random_encoder_weights_are_announced_once(monkeypatch, caplog):
    monkeypatch.setattr(vgg_module, "_said_random", False)
    with caplog.at_level(logging.INFO, logger="unet_patches.models.vgg"):
        build_model(ModelConfig(name="vgg16_unet", base_width=4))
        build_model(ModelConfig(name="segnet", base_width=4))
        build_model(ModelConfig(name="vgg16_unet", base_width=4), pretrained=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "unet_patches.models.vgg"]
    assert messages == ["vgg16_unet: model.encoder_weights is null, so the VGG-16 encoder starts from random weights"]
