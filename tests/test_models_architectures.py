"""The model family behind ``MODELS``: shapes, gradients, a tiny overfit, the size rules, the settings
each model reads, and the cost count."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unet_patches.errors import UserError
from unet_patches.models import (
    MODELS,
    InceptionUNet,
    ModelConfig,
    build_model,
    check_config,
    describe,
    input_size_multiple,
    model_cost,
)
from unet_patches.models.inception import InceptionBlock, branch_widths

NAMES = list(MODELS)


def _model(name: str, **settings) -> nn.Module:
    return build_model(ModelConfig(name=name, **{"base_width": 4, **settings}))


def test_the_registry_holds_the_family():
    assert NAMES == ["unet", "inception_unet", "segnet", "vgg16_unet"]
    assert {name: input_size_multiple({"name": name}) for name in NAMES} == {
        "unet": 1,
        "inception_unet": 1,
        "segnet": 32,
        "vgg16_unet": 16,
    }


@pytest.mark.parametrize("name", NAMES)
def test_any_channel_and_class_count_gives_logits_of_the_input_size(name):
    torch.manual_seed(0)
    model = _model(name, in_channels=2, num_classes=5).eval()
    assert model.config.name == name and isinstance(model, MODELS[name])
    with torch.no_grad():
        out = model(torch.rand(2, 2, 64, 96))
    assert out.shape == (2, 5, 64, 96)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_gives_finite_gradients_down_to_the_first_layer(name):
    torch.manual_seed(0)
    model = _model(name, in_channels=3, num_classes=4, dropout=0.2)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.randint(0, 4, (2, 64, 64)))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)


def _two_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two gray images: a bright rectangle (class 1) and a medium bar (class 2) on a dark noisy ground."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, size, size, dtype=torch.long)
    for n, (y, x) in enumerate([(3, 5), (12, 14)]):
        mask[n, y : y + 10, x : x + 9] = 1
        mask[n, y + 13 : y + 18, 2:30] = 2
    brightness = torch.tensor([0.0, 0.7, 0.35])[mask].unsqueeze(1)  # classes 1 and 2 about 0.9 and 0.55
    return 0.2 + 0.05 * torch.rand(2, 1, size, size, generator=g) + brightness, mask


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_model_overfits_two_images(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, base_width=8))
    image, mask = _two_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(image), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(image)
    accuracy = (logits.argmax(1) == mask).float().mean().item()
    # Over seeds 0-5 the loss fell 15- to 230-fold and the accuracy was at least 0.968.
    assert F.cross_entropy(logits, mask).item() < losses[0] / 8
    assert accuracy > 0.95, accuracy


@pytest.mark.parametrize(
    "name, size, message",
    [
        ("segnet", (50, 64), r"^input height 50 is not a multiple of 32: segnet needs .* 2\*\*5 = 32"),
        ("segnet", (64, 48), r"^input width 48 is not a multiple of 32"),
        ("vgg16_unet", (48, 40), r"^input width 40 is not a multiple of 16: vgg16_unet needs .* 2\*\*4 = 16"),
    ],
)
def test_a_size_the_pooling_cannot_handle_is_a_clear_error(name, size, message):
    with pytest.raises(ValueError, match=message) as error:
        _model(name).eval()(torch.rand(1, 1, *size))
    assert not isinstance(error.value, UserError)


@pytest.mark.parametrize("name", ["unet", "inception_unet"])
@pytest.mark.parametrize("size", [(37, 53), (5, 3)])
def test_the_unets_take_any_size(name, size):
    model = _model(name, depth=3, downsampling="strided_conv").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("upsampling", ["bilinear", "nearest", "transpose"])
@pytest.mark.parametrize("downsampling", ["maxpool", "strided_conv"])
@pytest.mark.parametrize("normalization, activation", [("batch", "relu"), ("none", "leaky_relu")])
def test_unet_variants(upsampling, downsampling, normalization, activation):
    model = _model(
        "unet",
        depth=2,
        upsampling=upsampling,
        downsampling=downsampling,
        normalization=normalization,
        activation=activation,
    ).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 21, 30)).shape == (1, 3, 21, 30)
    kinds = {type(m) for m in model.modules()}
    assert (nn.ConvTranspose2d in kinds) == (upsampling == "transpose")
    assert (nn.MaxPool2d in kinds) == (downsampling == "maxpool")
    assert (nn.BatchNorm2d in kinds) == (normalization == "batch")
    assert (nn.LeakyReLU in kinds) == (activation == "leaky_relu") != (nn.ReLU in kinds)
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)]
    assert all((conv.bias is None) == (normalization == "batch") for conv in convs)
    strided = [conv for conv in convs if conv.stride == (2, 2)]
    assert len(strided) == (2 if downsampling == "strided_conv" else 0)
    if upsampling == "nearest":
        assert {m.mode for m in model.modules() if isinstance(m, nn.Upsample)} == {"nearest"}


def test_the_inception_block_has_four_branches_concatenated_to_its_width():
    block = InceptionBlock(3, 10).eval()
    assert branch_widths(10) == (3, 3, 2, 2) and branch_widths(8) == (2, 2, 2, 2)
    assert len(block.branches) == 4
    kernels = [[m.kernel_size for m in branch if isinstance(m, nn.Conv2d)] for branch in block.branches]
    assert kernels == [[(1, 1)], [(1, 1), (3, 3)], [(1, 1), (3, 3), (3, 3)], [(1, 1)]]
    assert isinstance(block.branches[3][0], nn.MaxPool2d)
    assert all(isinstance(m, nn.LeakyReLU) for m in block.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU)))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 7
    with torch.no_grad():
        assert block(torch.rand(2, 3, 9, 11)).shape == (2, 10, 9, 11)
    model = InceptionUNet(base_width=4, depth=2)
    assert isinstance(model.inc, InceptionBlock) and all(isinstance(d[1], InceptionBlock) for d in model.downs)


def test_segnet_is_vgg16_with_unpooling():
    model = _model("segnet", in_channels=3)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.return_indices for p in pools)
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in decoder_convs] == [32, 32, 32, 32, 32, 16, 16, 16, 8, 8, 4, 4, 4]
    assert model.classifier.kernel_size == (1, 1)


def test_vgg16_unet_has_skips_from_every_stage():
    model = _model("vgg16_unet", in_channels=3)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    assert [up.conv[0].in_channels for up in model.ups] == [64, 48, 24, 12]  # upsampled + skip


@pytest.mark.parametrize(
    "name, settings, message",
    [
        ("segnet", {"upsampling": "transpose"}, r"^model.upsampling = 'transpose' does not apply to segnet"),
        ("segnet", {"depth": 3}, r"model.depth = 3 .* leave it out or set 4 or 5$"),
        ("segnet", {"downsampling": "strided_conv"}, "model.downsampling"),
        ("vgg16_unet", {"depth": 5}, r"model.depth = 5 .* set 4$"),
        ("unet", {"encoder_weights": "vgg.pt"}, r"model.encoder_weights = 'vgg.pt' .* set null$"),
        ("inception_unet", {"activation": "relu", "base_width": 3}, "model.base_width = 3"),
    ],
)
def test_a_setting_the_model_does_not_read_must_keep_its_default(name, settings, message):
    config = ModelConfig(name=name, **settings)
    with pytest.raises(UserError, match=message):
        check_config(config)
    with pytest.raises(UserError, match=message):
        build_model(config.to_dict())


def test_the_value_a_model_has_anyway_is_accepted():
    assert check_config({"name": "segnet", "depth": 5}).depth == 5
    assert isinstance(
        build_model({"name": "inception_unet", "activation": "leaky_relu", "base_width": 4}), InceptionUNet
    )
    with pytest.raises(UserError, match="model.name = 'segnett'.*did you mean 'segnet'"):
        check_config({"name": "segnett"})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"downsampling": "avgpool"}, "model.downsampling = 'avgpool': unknown downsampling mode"),
        ({"normalization": "group"}, "model.normalization"),
        ({"activation": "gelu"}, "model.activation"),
        ({"upsampling": "bicubic"}, "model.upsampling"),
        ({"encoder_weights": ""}, "model.encoder_weights"),
    ],
)
def test_bad_new_settings_raise_user_error(values, message):
    with pytest.raises(UserError, match=message):
        ModelConfig(**values)


def test_every_setting_survives_the_dict_round_trip():
    config = ModelConfig(
        name="vgg16_unet",
        in_channels=2,
        num_classes=5,
        base_width=4,
        upsampling="nearest",
        dropout=0.1,
        normalization="none",
        activation="leaky_relu",
        encoder_weights="weights/vgg16.pt",
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = build_model(config.to_dict(), pretrained=False)  # the file is only read when pretrained
    assert model.config == config


def test_model_cost_counts_multiply_adds_as_two_flop():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Flatten(), nn.Linear(2 * 16 * 16, 3)
    ).train()
    parameters, mflop = model_cost(model, 8, in_channels=2)
    assert parameters == sum(p.numel() for p in model.parameters())
    multiply_adds = 4 * 8 * 8 * 2 * 9 + 4 * 8 * 8 * 2 * 4 + 3 * 2 * 16 * 16
    assert mflop == pytest.approx(2 * multiply_adds / 64 / 1e6)
    assert model.training  # the mode is restored


def test_model_cost_scales_with_width():
    _, small = model_cost(_model("unet", depth=2), 32)
    _, big = model_cost(_model("unet", depth=2, base_width=8), 32)
    assert 3.5 < big / small < 4.1  # all but the first and last layers cost 4x
    line = describe(_model("segnet"), 64)
    assert line.startswith("segnet: ") and "M parameters" in line and "MFLOP per pixel" in line
