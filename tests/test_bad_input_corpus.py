"""A corpus of bad input for every command: each case must end with exit status 2 and exactly one line on
stderr that names what is wrong (the file, key or value), never a traceback, and must leave no partial
output behind (no new or changed files under the case's folder; the decode cache is not an output)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_patches.cli import main
from unet_patches.data.cache import CACHE_DIR_NAME
from unet_patches.data.synthetic import SyntheticSpec, generate_dataset
from unet_patches.models import ModelConfig

from helpers import write_unet_checkpoint

SPEC = SyntheticSpec(height=64, width=48)
MODEL = ModelConfig(name="unet", base_width=4, depth=2)
CLASS_NAMES = ["background", "line", "ellipse"]


# ---------------------------------------------------------------- building blocks


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 100000 x 100000 gray pixels (10 GB once decoded)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_001 * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 48), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def nan_tiff() -> bytes:
    image = np.random.default_rng(0).random((64, 48), dtype=np.float32)
    image[10:20, 5:30] = np.nan
    return tiff_bytes(image)


def all_nan_tiff() -> bytes:
    return tiff_bytes(np.full((64, 48), np.nan, np.float32))


def complex_tiff() -> bytes:
    return tiff_bytes((np.ones((64, 48)) + 1j).astype(np.complex64))


def int32_tiff() -> bytes:
    return tiff_bytes(np.arange(64 * 48, dtype=np.int32).reshape(64, 48) * 100_000)


def two_channel_tiff() -> bytes:
    return tiff_bytes(np.zeros((64, 48, 2), np.uint8))


def mask_with(value: int) -> bytes:
    mask = np.zeros((64, 48), np.uint8)
    mask[5:15, 5:15] = value
    mask[30:40, 20:30] = 1
    return png_bytes(mask)


def small_mask() -> bytes:
    return png_bytes(np.zeros((32, 32), np.uint8))


class Evil:
    """Unpickling this creates (truncates) a file: a checkpoint must never run it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def valid_params(tmp: Path) -> dict:
    return {
        "data": {"root": str(tmp / "data")},
        "synthetic": {"height": 64, "width": 48, "n_train": 2, "n_test": 1},
        "patches": {"patch_size": 32, "per_image": 2},
        "model": {"base_width": 4, "depth": 2},
        "training": {
            "folder": "train",
            "epochs": 1,
            "batch_size": 2,
            "samples_per_epoch": 4,
            "val_windows_per_image": 1,
            "precision": "fp32",
            "num_workers": 0,
            "checkpoint_dir": str(tmp / "ck"),
            "log_dir": str(tmp / "runs"),
        },
        "inference": {"batch_size": 4},
    }


# ---------------------------------------------------------------- module fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    generate_dataset(root / "data", n_train=3, n_test=2, seed=0, spec=SPEC)
    write_unet_checkpoint(root / "ckpt.pt", config=MODEL, class_names=CLASS_NAMES)
    return root


class Ctx:
    """The case's folder (the current directory) with a copy of the data, a good checkpoint and params."""

    def __init__(self, tmp: Path, assets: Path):
        self.tmp = tmp
        shutil.copytree(assets / "data", tmp / "data")
        shutil.copy(assets / "ckpt.pt", tmp / "ckpt.pt")
        self.params_values = valid_params(tmp)
        (tmp / "params.json").write_text(json.dumps(self.params_values))

    @property
    def params(self) -> list[str]:
        return ["--params", str(self.tmp / "params.json")]

    def good_state(self) -> dict:
        return torch.load(self.tmp / "ckpt.pt", weights_only=True)

    def ckpt(self, name: str, change: Callable[[dict], object] | None = None, raw: bytes | None = None) -> str:
        """Write a checkpoint variant: ``raw`` bytes, or the good state changed by ``change`` (which may
        return a whole replacement object)."""
        path = self.tmp / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            state = self.good_state()
            replaced = change(state) if change else None
            torch.save(state if replaced is None else replaced, path)
        return str(path)

    def bad_params(self, extra, name: str = "bad_params.json") -> list[str]:
        """A params file: the valid one with ``extra`` merged in (dict), or raw text (str)."""
        path = self.tmp / name
        if isinstance(extra, str):
            path.write_text(extra)
        else:
            path.write_text(json.dumps(deep_merge(self.params_values, extra)))
        return ["--params", str(path)]

    def pair(self, split: str, stem: str, image: bytes | None = None, mask: bytes | None = None, ext=".png"):
        """Add an image/mask pair named ``stem`` to data/<split>: good contents unless given;
        ``mask=b"-"`` leaves the mask out."""
        folder = self.tmp / "data" / split
        good_image = (folder / "images" / "0000.png").read_bytes()
        good_mask = (folder / "masks" / "0000.png").read_bytes()
        (folder / "images" / f"{stem}{ext}").write_bytes(good_image if image is None else image)
        if mask != b"-":
            (folder / "masks" / f"{stem}.png").write_bytes(good_mask if mask is None else mask)

    def folder(self, name: str, files: dict[str, bytes] | None = None) -> str:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(content)
        return str(path)

    def file(self, name: str, content: bytes = b"keep me") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)

    def read_only(self, name: str = "ro_dir") -> str:
        path = self.tmp / name
        path.mkdir()
        path.chmod(0o500)
        return str(path)

    def input_image(self, name: str, content: bytes) -> str:
        """A lone input image for predict/submit, in its own folder."""
        return self.file(f"inputs/{name}", content)

    def grid(self, content, name: str = "grid.json") -> str:
        path = self.tmp / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], tuple[list, list[str]]]
    outs: tuple[str, ...] = ()
    read_only: bool = False

    def __repr__(self):
        return self.id


CASES: list[Case] = []


def case(id, build, outs=(), read_only=False):
    CASES.append(Case(id, build, tuple(outs), read_only))


# ---------------------------------------------------------------- generate

GEN = ("gen_out",)


def gen(c: Ctx, *flags):
    return ["generate", "-o", "gen_out", *flags, *c.params]


case("generate-n-train-negative", lambda c: (gen(c, "--n-train", "-1"), ["n_train"]), GEN)
case("generate-height-zero", lambda c: (gen(c, "--height", "0"), ["height"]), GEN)
case("generate-width-negative", lambda c: (gen(c, "--width", "-5"), ["width"]), GEN)
case("generate-lines-reversed", lambda c: (gen(c, "--lines", "5", "2"), ["lines"]), GEN)
case("generate-noise-std-nan", lambda c: (gen(c, "--noise-std", "nan"), ["noise_std"]), GEN)
case("generate-noise-std-inf", lambda c: (gen(c, "--noise-std", "inf"), ["noise_std"]), GEN)
case("generate-bit-depth-12", lambda c: (gen(c, "--bit-depth", "12"), ["--bit-depth"]), GEN)
case("generate-max-value-zero", lambda c: (gen(c, "--max-value", "0"), ["max"]), GEN)
case("generate-max-value-too-big", lambda c: (gen(c, "--max-value", "70000"), ["70000"]), GEN)
case("generate-out-is-a-file", lambda c: (["generate", "-o", c.file("occupied.txt"), *c.params], ["occupied.txt"]))
case(
    "generate-out-not-empty",
    lambda c: (["generate", "-o", c.folder("mine", {"precious.txt": b"x"}), *c.params], ["mine", "--overwrite"]),
)
case(
    "generate-params-not-json",
    lambda c: (["generate", "-o", "gen_out", *c.bad_params("{not json")], ["bad_params.json"]),
    GEN,
)
case(
    "generate-params-json-list",
    lambda c: (["generate", "-o", "gen_out", *c.bad_params("[1, 2]")], ["bad_params.json"]),
    GEN,
)
case(
    "generate-params-zero-byte", lambda c: (["generate", "-o", "gen_out", *c.bad_params("")], ["bad_params.json"]), GEN
)
case(
    "generate-params-missing",
    lambda c: (["generate", "-o", "gen_out", "--params", "nope_params.json"], ["nope_params.json"]),
    GEN,
)
case(
    "generate-params-unknown-key",
    lambda c: (
        ["generate", "-o", "gen_out", *c.bad_params({"synthetic": {"n_trian": 3}})],
        ["synthetic.n_trian", "bad_params.json"],
    ),
    GEN,
)
case(
    "generate-params-unknown-section",
    lambda c: (["generate", "-o", "gen_out", *c.bad_params({"bogus_section": {}})], ["bogus_section"]),
    GEN,
)
case(
    "generate-params-section-not-object",
    lambda c: (["generate", "-o", "gen_out", *c.bad_params({"synthetic": 5})], ["synthetic", "bad_params.json"]),
    GEN,
)
case(
    "generate-params-wrong-type",
    lambda c: (
        ["generate", "-o", "gen_out", *c.bad_params({"synthetic": {"n_train": "many"}})],
        ["synthetic.n_train", "bad_params.json"],
    ),
    GEN,
)
case(
    "generate-params-nan",
    lambda c: (
        ["generate", "-o", "gen_out", *c.bad_params('{"synthetic": {"noise_std": NaN}}')],
        ["synthetic.noise_std", "bad_params.json"],
    ),
    GEN,
)
case(
    "generate-read-only-out",
    lambda c: (["generate", "-o", c.read_only() + "/out", *c.params], ["ro_dir"]),
    read_only=True,
)

# ---------------------------------------------------------------- patches

PAT = ("pat_out",)


def pat(c: Ctx, *flags, source="data/train"):
    return ["patches", source, "-o", "pat_out", *flags, *c.params]


def pat_pair(stem, image=None, mask=None, ext=".png"):
    def build(c: Ctx):
        c.pair("train", stem, image, mask, ext)
        return pat(c), [stem]

    return build


case("patches-missing-source", lambda c: (pat(c, source="no_such_src"), ["no_such_src"]), PAT)
case("patches-empty-source", lambda c: (pat(c, source=c.folder("empty_src")), ["empty_src"]), PAT)
case(
    "patches-images-without-masks-folder",
    lambda c: (pat(c, source=c.folder("only_images", {"images/a.png": mask_with(1)})), ["only_images"]),
    PAT,
)
case("patches-size-zero", lambda c: (pat(c, "-s", "0"), ["patch_size"]), PAT)
case("patches-size-negative", lambda c: (pat(c, "-s", "-4"), ["patch_size"]), PAT)
case("patches-size-larger-than-images", lambda c: (pat(c, "-s", "512"), ["512"]), PAT)
case("patches-per-image-zero", lambda c: (pat(c, "-n", "0"), ["per_image"]), PAT)
case("patches-percentiles-reversed", lambda c: (pat(c, "--percentiles", "99", "1"), ["percentiles"]), PAT)
case("patches-percentiles-out-of-range", lambda c: (pat(c, "--percentiles", "-5", "120"), ["percentiles"]), PAT)
case("patches-resize-zero", lambda c: (pat(c, "--resize", "0", "10"), ["resize"]), PAT)
case("patches-classes-one", lambda c: (pat(c, "--classes", "1"), ["num_classes"]), PAT)
case("patches-channels-two", lambda c: (pat(c, "--channels", "2"), ["in_channels"]), PAT)
case("patches-page-negative", lambda c: (pat(c, "--page", "-1"), ["page"]), PAT)
case("patches-normalize-unknown", lambda c: (pat(c, "--normalize", "sideways"), ["--normalize"]), PAT)
case(
    "patches-out-is-a-file",
    lambda c: (["patches", "data/train", "-o", c.file("occupied.txt"), *c.params], ["occupied.txt"]),
)
case(
    "patches-out-not-empty",
    lambda c: (
        ["patches", "data/train", "-o", c.folder("mine", {"precious.txt": b"x"}), *c.params],
        ["mine", "--overwrite"],
    ),
)
case("patches-zero-byte-image", pat_pair("zerobyte", image=b""), PAT)
case("patches-truncated-image", lambda c: pat_pair("truncated", image=mask_with(1)[:60])(c), PAT)
case("patches-text-as-png", pat_pair("textpng", image=b"this is not a picture\n" * 20), PAT)
case("patches-jpeg-named-tif", lambda c: pat_pair("jpegtif", image=jpeg_bytes(), ext=".tif")(c), PAT)
case("patches-bomb-png", lambda c: pat_pair("bomb", image=bomb_png())(c), PAT)
case("patches-nan-float-tiff", lambda c: pat_pair("nanimage", image=nan_tiff(), ext=".tif")(c), PAT)
case("patches-complex-tiff", lambda c: pat_pair("complexim", image=complex_tiff(), ext=".tif")(c), PAT)
case("patches-two-channel-tiff", lambda c: pat_pair("twochan", image=two_channel_tiff(), ext=".tif")(c), PAT)
case("patches-mask-value-7", lambda c: pat_pair("maskseven", mask=mask_with(7))(c), PAT)
case("patches-mask-size-mismatch", lambda c: pat_pair("smallmask", mask=small_mask())(c), PAT)
case("patches-zero-byte-mask", pat_pair("emptymask", mask=b""), PAT)
case("patches-text-mask", pat_pair("textmask", mask=b"not a mask"), PAT)
case(
    "patches-params-unknown-key",
    lambda c: (
        ["patches", "data/train", "-o", "pat_out", *c.bad_params({"patches": {"patch_sise": 32}})],
        ["patches.patch_sise", "bad_params.json"],
    ),
    PAT,
)
case(
    "patches-params-wrong-type",
    lambda c: (
        ["patches", "data/train", "-o", "pat_out", *c.bad_params({"patches": {"per_image": 2.5}})],
        ["patches.per_image", "bad_params.json"],
    ),
    PAT,
)
case(
    "patches-read-only-out",
    lambda c: (["patches", "data/train", "-o", c.read_only() + "/out", *c.params], ["ro_dir"]),
    read_only=True,
)

# ---------------------------------------------------------------- inspect


def ins(c: Ctx, *flags, source="data/train"):
    return ["inspect", source, *flags, *c.params]


def ins_pair(stem, image=None, mask=None, ext=".png"):
    def build(c: Ctx):
        c.pair("train", stem, image, mask, ext)
        return ins(c), [stem]

    return build


case("inspect-missing-folder", lambda c: (ins(c, source="no_such_dir"), ["no_such_dir"]))
case("inspect-empty-folder", lambda c: (ins(c, source=c.folder("empty_dir")), ["empty_dir"]))
case("inspect-zero-byte-image", ins_pair("zerobyte", image=b""))
case("inspect-text-as-png", ins_pair("textpng", image=b"plain text, not a PNG"))
case("inspect-bomb-png", lambda c: ins_pair("bomb", image=bomb_png())(c))
case("inspect-nan-float-tiff", lambda c: ins_pair("nanimage", image=all_nan_tiff(), ext=".tif")(c))
case("inspect-complex-tiff", lambda c: ins_pair("complexim", image=complex_tiff(), ext=".tif")(c))
case("inspect-mask-value-7", lambda c: ins_pair("maskseven", mask=mask_with(7))(c))
case("inspect-mask-size-mismatch", lambda c: ins_pair("smallmask", mask=small_mask())(c))
case("inspect-val-fraction-1.5", lambda c: (ins(c, "--val-fraction", "1.5"), ["val_fraction"]))
case("inspect-val-fraction-negative", lambda c: (ins(c, "--val-fraction", "-0.2"), ["val_fraction"]))
case("inspect-size-zero", lambda c: (ins(c, "-s", "0"), ["patch_size"]))
case("inspect-classes-zero", lambda c: (ins(c, "--classes", "0"), ["num_classes"]))
case("inspect-params-json-list", lambda c: (["inspect", "data/train", *c.bad_params("[]")], ["bad_params.json"]))

# ---------------------------------------------------------------- train

TRAIN = ("ck", "runs")


def tr(c: Ctx, *flags, params=None):
    return ["train", *flags, "--device", "cpu", "--no-progress", *(params or c.params)]


def tr_params(extra, *needles):
    return lambda c: (tr(c, params=c.bad_params(extra)), [*needles, "bad_params.json"])


def tr_pair(stem, image=None, mask=None, ext=".png"):
    def build(c: Ctx):
        c.pair("train", stem, image, mask, ext)
        return tr(c), [stem]

    return build


case("train-fold-beyond-folds", lambda c: (tr(c, "--folds", "3", "--fold", "3"), ["training.fold = 3"]), TRAIN)
case("train-one-fold", lambda c: (tr(c, "--folds", "1"), ["training.folds = 1"]), TRAIN)
case("train-folds-without-fold", lambda c: (tr(c, "--folds", "3"), ["--fold I"]), TRAIN)
case(
    "crossval-more-folds-than-images",
    lambda c: (["crossval", "-k", "999", *tr(c)[1:]], ["training.folds = 999"]),
    TRAIN,
)
case("crossval-one-fold", lambda c: (["crossval", "-k", "1", *tr(c)[1:]], ["training.folds = 1"]), TRAIN)
case(
    "crossval-shard-not-a-fraction",
    lambda c: (["crossval", "-k", "2", "--shard", "first", *tr(c)[1:]], ["--shard first", "I/N"]),
    TRAIN,
)
case(
    "crossval-missing-folder",
    lambda c: (["crossval", "-k", "2", *tr(c)[1:3], "-f", "no_such_folder", *tr(c)[3:]], ["no_such_folder"]),
    TRAIN,
)
case("train-batch-size-zero", lambda c: (tr(c, "-b", "0"), ["batch_size"]), TRAIN)
case("train-epochs-zero", lambda c: (tr(c, "-e", "0"), ["epochs"]), TRAIN)
case("train-epochs-not-a-number", lambda c: (tr(c, "-e", "many"), ["-e/--epochs"]), TRAIN)
case("train-learning-rate-negative", lambda c: (tr(c, "-l", "-0.1"), ["learning_rate"]), TRAIN)
case("train-learning-rate-nan", lambda c: (tr(c, "-l", "nan"), ["learning_rate"]), TRAIN)
case("train-warmup-1.5", lambda c: (tr(c, "--warmup", "1.5"), ["warmup"]), TRAIN)
case("train-workers-negative", lambda c: (tr(c, "--workers", "-1"), ["num_workers"]), TRAIN)
case("train-time-budget-negative", lambda c: (tr(c, "--time-budget", "-1"), ["time"]), TRAIN)
case("train-unknown-model-flag", lambda c: (tr(c, "--model", "resnet9000"), ["--model"]), TRAIN)
case("train-unknown-device", lambda c: (["train", "--device", "tpu9", "--no-progress", *c.params], ["tpu9"]), TRAIN)
case(
    "train-params-learning-rate-infinity",
    tr_params('{"training": {"learning_rate": Infinity}}', "training.learning_rate"),
    TRAIN,
)
case(
    "train-params-learning-rate-nan", tr_params('{"training": {"learning_rate": NaN}}', "training.learning_rate"), TRAIN
)
case("train-params-batch-size-negative", tr_params({"training": {"batch_size": -4}}, "training.batch_size"), TRAIN)
case("train-params-batch-size-bool", tr_params({"training": {"batch_size": True}}, "training.batch_size"), TRAIN)
case("train-params-epochs-string", tr_params({"training": {"epochs": "ten"}}, "training.epochs"), TRAIN)
case("train-params-unknown-key", tr_params({"training": {"lerning_rate": 0.1}}, "training.lerning_rate"), TRAIN)
case("train-params-unknown-model", tr_params({"model": {"name": "resnet9000"}}, "resnet9000"), TRAIN)
case("train-params-unknown-loss", tr_params({"training": {"loss": "hinge_xyz"}}, "hinge_xyz"), TRAIN)
case("train-params-unknown-optimizer", tr_params({"training": {"optimizer": "lion_xyz"}}, "lion_xyz"), TRAIN)
case("train-params-unknown-schedule", tr_params({"training": {"schedule": "zigzag"}}, "zigzag"), TRAIN)
case("train-params-class-names-length", tr_params({"data": {"class_names": ["a", "b"]}}, "class_names"), TRAIN)
case("train-params-mask-values-garbage", tr_params({"data": {"mask_values": {"line": "x"}}}, "mask_values"), TRAIN)
case("train-params-model-depth-zero", tr_params({"model": {"depth": 0}}, "model.depth"), TRAIN)
case(
    "train-params-not-json", lambda c: (tr(c, params=c.bad_params("training: {epochs: 1}")), ["bad_params.json"]), TRAIN
)
case("train-params-json-list", lambda c: (tr(c, params=c.bad_params("[]")), ["bad_params.json"]), TRAIN)
case("train-missing-folder", lambda c: (tr(c, "-f", "nowhere_folder"), ["nowhere_folder"]), TRAIN)
case(
    "train-empty-folder",
    lambda c: (c.folder("data/empty_folder") and tr(c, "-f", "empty_folder"), ["empty_folder"]),
    TRAIN,
)
case("train-zero-byte-image", tr_pair("zerobyte", image=b""), TRAIN)
case("train-bomb-png", lambda c: tr_pair("bomb", image=bomb_png())(c), TRAIN)
case("train-complex-tiff", lambda c: tr_pair("complexim", image=complex_tiff(), ext=".tif")(c), TRAIN)
case("train-nan-float-tiff", lambda c: tr_pair("nanimage", image=nan_tiff(), ext=".tif")(c), TRAIN)
case("train-mask-value-7", lambda c: tr_pair("maskseven", mask=mask_with(7))(c), TRAIN)
case("train-mask-size-mismatch", lambda c: tr_pair("smallmask", mask=small_mask())(c), TRAIN)
case("train-load-zero-byte-checkpoint", lambda c: (tr(c, "-c", c.ckpt("empty.pt", raw=b"")), ["empty.pt"]), TRAIN)
case("train-load-random-bytes", lambda c: (tr(c, "-c", c.ckpt("noise.pt", raw=os.urandom(4096))), ["noise.pt"]), TRAIN)
case("train-load-missing-checkpoint", lambda c: (tr(c, "-c", "gone.pt"), ["gone.pt"]), TRAIN)
case(
    "train-resume-text-file",
    lambda c: (tr(c, "--resume", c.ckpt("notes.pt", raw=b"just some notes\n")), ["notes.pt"]),
    TRAIN,
)
case(
    "train-encoder-weights-missing",
    lambda c: (
        tr(
            c,
            "--model",
            "vgg16_unet",
            "--encoder-weights",
            "nope_vgg.pth",
            params=c.bad_params({"model": {"depth": 4}}, "vgg_params.json"),
        ),
        ["nope_vgg.pth"],
    ),
    TRAIN,
)
case(
    "train-encoder-weights-garbage",
    lambda c: (
        tr(
            c,
            "--model",
            "vgg16_unet",
            "--encoder-weights",
            c.file("junk_vgg.pth", os.urandom(2048)),
            params=c.bad_params({"model": {"depth": 4}}, "vgg_params.json"),
        ),
        ["junk_vgg.pth"],
    ),
    TRAIN,
)
case(
    "train-occupied-run-folder",
    lambda c: (c.file("ck/myrun/last.pt", b"old run") and tr(c, "--run-name", "myrun"), ["myrun"]),
)
case(
    "train-checkpoint-dir-is-a-file",
    lambda c: (
        c.file("occupied.txt")
        and tr(c, params=c.bad_params({"training": {"checkpoint_dir": str(c.tmp / "occupied.txt")}})),
        ["occupied.txt"],
    ),
    ("runs",),
)
case(
    "train-read-only-checkpoint-dir",
    lambda c: (tr(c, params=c.bad_params({"training": {"checkpoint_dir": c.read_only() + "/ck"}})), ["ro_dir"]),
    ("runs",),
    read_only=True,
)

case("train-plan-without-budget", lambda c: (tr(c, "--plan"), ["--time-budget"]), TRAIN)
case(
    "train-plan-with-resume",
    lambda c: (tr(c, "--plan", "--resume", c.ckpt("resume_me.pt")), ["--plan", "--resume"]),
    TRAIN,
)


def pixel_weights_without_objects(c: Ctx):
    for mask in (c.tmp / "data" / "train" / "masks").iterdir():
        mask.write_bytes(png_bytes(np.zeros((64, 48), np.uint8)))
    return tr(c, "--pixel-weights", "unet"), ["no mask holds a foreground object"]


case("train-pixel-weights-without-objects", pixel_weights_without_objects, TRAIN)

# ---------------------------------------------------------------- plan

PLAN = ("plan.json",)


def pl(c: Ctx, *flags, source="data/train", minutes="0.1", out="plan.json"):
    return ["plan", source, "--minutes", minutes, "-o", out, *flags, *c.params]


case("plan-missing-folder", lambda c: (pl(c, source="no_such_dir"), ["no_such_dir"]), PLAN)
case("plan-empty-folder", lambda c: (pl(c, source=c.folder("empty_dir")), ["empty_dir", "not an image folder"]), PLAN)
case(
    "plan-patch-folder",
    lambda c: (pl(c, source=c.folder("patch_dir", {"manifest.json": b"{}"})), ["patch_dir", "plan"]),
    PLAN,
)


def plan_bad_mask(c: Ctx):
    c.pair("train", "maskseven", mask=mask_with(7))
    return pl(c), ["maskseven", "inspect"]


case("plan-mask-value-7", plan_bad_mask, PLAN)
case("plan-minutes-zero", lambda c: (pl(c, minutes="0"), ["--minutes"]), PLAN)
case("plan-minutes-nan", lambda c: (pl(c, minutes="nan"), ["--minutes"]), PLAN)
case("plan-minutes-text", lambda c: (pl(c, minutes="soon"), ["--minutes"]), PLAN)
case("plan-output-exists", lambda c: (c.file("plan.json", b"{}") and pl(c), ["plan.json", "--overwrite"]))
case("plan-output-folder-missing", lambda c: (pl(c, out="no_dir/plan.json"), ["no_dir"]), PLAN)
case(
    "plan-output-is-its-params", lambda c: (pl(c, "--overwrite", out=str(c.tmp / "params.json")), ["params.json"]), PLAN
)

# ---------------------------------------------------------------- predict

PRED = ("pred",)


def pr(c: Ctx, *flags, ckpt=None, inputs=None):
    return ["predict", ckpt or "ckpt.pt", *(inputs or ["data/test/images"]), "-o", "pred", "--no-progress", *flags]


def pr_ckpt(name, change=None, raw=None, extra_needles=()):
    return lambda c: (pr(c, ckpt=c.ckpt(name, change, raw)), [name, *extra_needles])


def pr_input(name, content):
    return lambda c: (pr(c, inputs=[c.input_image(name, content)]), [name])


def set_key(key, value):
    def change(state):
        state[key] = value

    return change


def set_model_config(**values):
    def change(state):
        state["model_config"] = {**state["model_config"], **values}

    return change


def evil_ckpt(name):
    def build(c: Ctx):
        path = c.tmp / name
        torch.save({"format_version": 1, "model": Evil(c.tmp / "pwned.txt"), "model_config": {}}, path)
        return pr(c, ckpt=str(path)), [name]

    return build


def evil_raw_pickle(name):
    def build(c: Ctx):
        (c.tmp / name).write_bytes(pickle.dumps(Evil(c.tmp / "pwned.txt")))
        return pr(c, ckpt=str(c.tmp / name)), [name]

    return build


case("predict-checkpoint-zero-byte", pr_ckpt("empty.pt", raw=b""), PRED)
case("predict-checkpoint-random-bytes", pr_ckpt("noise.pt", raw=os.urandom(4096)), PRED)
case("predict-checkpoint-text-file", pr_ckpt("notes.pt", raw=b"model = unet\n"), PRED)
case("predict-checkpoint-list", pr_ckpt("alist.pt", lambda s: [1, 2, 3]), PRED)
case("predict-checkpoint-tensor", pr_ckpt("tensor.pt", lambda s: torch.zeros(3)), PRED)
case("predict-checkpoint-without-model", pr_ckpt("nomodel.pt", lambda s: s.pop("model") and None), PRED)
case(
    "predict-checkpoint-model-config-wrong-type",
    pr_ckpt("wrongtype.pt", set_model_config(num_classes="three"), extra_needles=["num_classes"]),
    PRED,
)
case(
    "predict-checkpoint-unknown-model-setting",
    pr_ckpt("unknownsetting.pt", set_model_config(wings=3), extra_needles=["wings"]),
    PRED,
)
case(
    "predict-checkpoint-unknown-architecture",
    pr_ckpt("unknownarch.pt", set_model_config(name="resnet9000"), extra_needles=["resnet9000"]),
    PRED,
)
case("predict-checkpoint-weights-do-not-fit", pr_ckpt("misfit.pt", set_model_config(base_width=8)), PRED)
case(
    "predict-checkpoint-model-config-not-dict",
    pr_ckpt("configlist.pt", set_key("model_config", ["unet"]), extra_needles=["model_config"]),
    PRED,
)
case(
    "predict-checkpoint-class-names-wrong-length",
    pr_ckpt("classnames.pt", set_key("class_names", ["a", "b"]), extra_needles=["class_names"]),
    PRED,
)
case("predict-checkpoint-preprocess-string", pr_ckpt("prepstring.pt", set_key("preprocess", "garbage")), PRED)
case(
    "predict-checkpoint-preprocess-bad-dict",
    pr_ckpt("prepdict.pt", set_key("preprocess", {"normalize": "sideways", "percentiles": "x"})),
    PRED,
)
case("predict-checkpoint-patch-size-zero", pr_ckpt("patchzero.pt", set_key("patch_size", 0)), PRED)
case("predict-checkpoint-format-from-future", pr_ckpt("future.pt", set_key("format_version", 999)), PRED)
case("predict-checkpoint-int8-windows-garbage", pr_ckpt("int8bad.pt", set_key("int8_windows", "garbage")), PRED)
case(
    "predict-int8-checkpoint-without-windows",
    lambda c: (pr(c, "--precision", "int8", ckpt=c.ckpt("old.pt")), ["old.pt", "int8"]),
    PRED,
)
case("predict-precision-typo", lambda c: (pr(c, "--precision", "int9"), ["int9"]), PRED)
case("predict-format-typo", lambda c: (pr(c, "--format", "jpeg"), ["jpeg"]), PRED)
case("predict-shard-out-of-range", lambda c: (pr(c, "--shard", "2/2"), ["--shard 2/2"]), PRED)
case("predict-shard-not-a-fraction", lambda c: (pr(c, "--shard", "half"), ["--shard half", "I/N"]), PRED)
case("predict-shard-of-none", lambda c: (pr(c, "--shard", "0/0"), ["--shard 0/0"]), PRED)
case("predict-checkpoint-evil-pickle", evil_ckpt("evil.pt"), PRED)
case("predict-checkpoint-evil-raw-pickle", evil_raw_pickle("evil_raw.pt"), PRED)
case("predict-checkpoint-missing", lambda c: (pr(c, ckpt="gone.pt"), ["gone.pt"]), PRED)
case(
    "predict-checkpoint-temperature-nan",
    pr_ckpt("tnan.pt", set_key("calibration", {"temperature": float("nan")}), extra_needles=("temperature",)),
    PRED,
)
case(
    "predict-checkpoint-temperature-negative",
    pr_ckpt("tneg.pt", set_key("calibration", {"temperature": -2.0}), extra_needles=("temperature",)),
    PRED,
)
case("predict-checkpoint-calibration-garbage", pr_ckpt("calbad.pt", set_key("calibration", "warm")), PRED)
case("predict-review-without-uncertainty", lambda c: (pr(c, "--review", "3"), ["--review 3"]), PRED)
case("predict-review-negative", lambda c: (pr(c, "--uncertainty", "--review", "-1"), ["--review -1"]), PRED)
case("predict-checkpoint-empty-folder", lambda c: (pr(c, ckpt=c.folder("emptyrun")), ["emptyrun"]), PRED)
case(
    "predict-ensemble-with-one-bad-member",
    lambda c: (pr(c, ckpt="ckpt.pt," + c.ckpt("member.pt", raw=b"")), ["member.pt"]),
    PRED,
)
case("predict-onnx-garbage", pr_ckpt("model.onnx", raw=os.urandom(512)), PRED)
case("predict-window-zero", lambda c: (pr(c, "--window", "0"), ["window"]), PRED)
case("predict-window-negative", lambda c: (pr(c, "--window", "-32"), ["window"]), PRED)
case("predict-overlap-1.5", lambda c: (pr(c, "--overlap", "1.5"), ["overlap"]), PRED)
case("predict-overlap-negative", lambda c: (pr(c, "--overlap", "-0.5"), ["overlap"]), PRED)
case("predict-overlap-nan", lambda c: (pr(c, "--overlap", "nan"), ["overlap"]), PRED)
case("predict-batch-size-zero", lambda c: (pr(c, "--batch-size", "0"), ["batch_size"]), PRED)
case("predict-window-word", lambda c: (pr(c, "--window", "huge"), ["--window", "huge"]), PRED)
case("predict-overlap-word", lambda c: (pr(c, "--overlap", "lots"), ["--overlap", "lots"]), PRED)
case(
    "predict-params-window-word",
    lambda c: (pr(c, *c.bad_params({"inference": {"window": "huge"}})), ["inference.window", "bad_params.json"]),
    PRED,
)
case(
    "predict-params-window-zero",
    lambda c: (pr(c, *c.bad_params({"inference": {"window": 0}})), ["inference.window", "bad_params.json"]),
    PRED,
)
case(
    "predict-params-overlap-word",
    lambda c: (pr(c, *c.bad_params({"inference": {"overlap": "lots"}})), ["inference.overlap", "bad_params.json"]),
    PRED,
)
case(
    "predict-params-compile-word",
    lambda c: (pr(c, *c.bad_params({"inference": {"compile": "yes"}})), ["inference.compile", "bad_params.json"]),
    PRED,
)
case("predict-page-negative", lambda c: (pr(c, "--page", "-1"), ["page"]), PRED)
case("predict-unknown-device", lambda c: (pr(c, "--device", "banana"), ["banana"]), PRED)
case("predict-unknown-blend", lambda c: (pr(c, "--blend", "cubic"), ["--blend"]), PRED)
case(
    "predict-params-overlap-2",
    lambda c: (pr(c, *c.bad_params({"inference": {"overlap": 2}})), ["inference.overlap", "bad_params.json"]),
    PRED,
)
case(
    "predict-params-unknown-blend",
    lambda c: (pr(c, *c.bad_params({"inference": {"blend": "cubic"}})), ["cubic", "bad_params.json"]),
    PRED,
)
case("predict-input-missing", lambda c: (pr(c, inputs=["no_such.png"]), ["no_such.png"]), PRED)
case("predict-input-empty-folder", lambda c: (pr(c, inputs=[c.folder("empty_in")]), ["empty_in"]), PRED)
case("predict-input-zero-byte", pr_input("zerobyte.png", b""), PRED)
case("predict-input-truncated", lambda c: pr_input("truncated.png", mask_with(1)[:70])(c), PRED)
case("predict-input-text-as-png", pr_input("textpng.png", b"I am text.\n" * 10), PRED)
case("predict-input-jpeg-named-tif", lambda c: pr_input("jpegtif.tif", jpeg_bytes())(c), PRED)
case("predict-input-bomb-png", lambda c: pr_input("bomb.png", bomb_png())(c), PRED)
case("predict-input-nan-float-tiff", lambda c: pr_input("nanimage.tif", nan_tiff())(c), PRED)
case("predict-input-complex-tiff", lambda c: pr_input("complexim.tif", complex_tiff())(c), PRED)
case("predict-input-two-channel-tiff", lambda c: pr_input("twochan.tif", two_channel_tiff())(c), PRED)


def zarr_input(name, data=None, damage=False):
    def build(c: Ctx):
        import zarr

        path = c.tmp / name
        array = np.zeros((6, 40, 30), np.uint8) if data is None else data
        zarr.create_array(str(path), data=array, chunks=(*array.shape[:-2], 20, 20))
        if damage:
            (path / "zarr.json").write_text("{not json")
        return pr(c, inputs=[str(path)]), [name]

    return build


def pyramid_tiff(c: Ctx) -> str:
    path = c.tmp / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(np.zeros((64, 64), np.uint8), tile=(32, 32), subifds=1)
        tif.write(np.zeros((32, 32), np.uint8), tile=(32, 32), subfiletype=1)
    return str(path)


def onnx_model(c: Ctx, name: str, sidecar: bytes | None = None) -> str:
    """An ONNX export of the good checkpoint; ``sidecar``: its ``.json`` replaced (``b"-"``: removed)."""
    pytest.importorskip("onnx")
    from unet_patches.deploy.export import export_checkpoint

    path = export_checkpoint(c.tmp / "ckpt.pt", c.tmp / name, "onnx")
    info = Path(str(path) + ".json")
    if sidecar == b"-":
        info.unlink()
    elif sidecar is not None:
        info.write_bytes(sidecar)
    return str(path)


case(
    "predict-onnx-sidecar-missing",
    lambda c: (pr(c, ckpt=onnx_model(c, "lone.onnx", b"-")), ["lone.onnx.json", "export the checkpoint again"]),
    PRED,
)
case(
    "predict-onnx-sidecar-damaged",
    lambda c: (
        pr(c, ckpt=onnx_model(c, "cut.onnx", b'{"classes": ')),
        ["cut.onnx.json", "export the checkpoint again"],
    ),
    PRED,
)
case(
    "predict-onnx-as-int8",
    lambda c: (pr(c, "--precision", "int8", ckpt=onnx_model(c, "float.onnx")), ["precision int8", "ONNX"]),
    PRED,
)
case("predict-level-negative", lambda c: (pr(c, "--level", "-1"), ["--level", "'-1'"]), PRED)
case("predict-input-zarr-stack", zarr_input("stack.zarr"), PRED)
case("predict-input-zarr-damaged", zarr_input("broken.zarr", np.zeros((40, 30), np.uint8), damage=True), PRED)
case("predict-level-beyond-pyramid", lambda c: (pr(c, "--level", "4", inputs=[pyramid_tiff(c)]), ["level 4"]), PRED)
case("predict-input-garbage-slide", pr_input("scan.mrxs", b"MIRAX? no.\n" * 4), PRED)
case(
    "predict-one-image-over-shards-as-png",
    lambda c: (
        pr(c, "--shard", "0/2", "--format", "png", inputs=[pyramid_tiff(c)]),
        ["--format png", "use --format zarr"],
    ),
    PRED,
)
case(
    "predict-out-is-a-file",
    lambda c: (
        ["predict", "ckpt.pt", "data/test/images", "-o", c.file("occupied.txt"), "--no-progress"],
        ["occupied.txt"],
    ),
)
case(
    "predict-out-has-outputs",
    lambda c: (
        [
            "predict",
            "ckpt.pt",
            "data/test/images",
            "-o",
            c.folder("occupied_out", {"0000_labels.png": b"old", "0001_labels.png": b"old"}),
            "--no-progress",
        ],
        ["occupied_out", "--overwrite"],
    ),
)
case(
    "predict-read-only-out",
    lambda c: (["predict", "ckpt.pt", "data/test/images", "-o", c.read_only() + "/out", "--no-progress"], ["ro_dir"]),
    read_only=True,
)

# ---------------------------------------------------------------- merge-report


def shard_reports(c: Ctx, reports: dict[str, str]) -> list[str]:
    """A prediction folder whose .shards/ holds ``reports`` (name -> text)."""
    folder = c.folder("sharded", {f".shards/{name}": text.encode() for name, text in reports.items()})
    return ["merge-report", folder]


def shard_report(index: int, count: int) -> str:
    return json.dumps({"shard": index, "shards": count, "written": [], "skipped": []})


case("merge-report-missing-folder", lambda c: (["merge-report", "no_such_out"], ["no_such_out", "no shard reports"]))
case("merge-report-no-shard-reports", lambda c: (["merge-report", c.folder("plain_out")], ["plain_out", "--shard"]))
case(
    "merge-report-damaged-shard-report",
    lambda c: (shard_reports(c, {"shard-0-of-2.json": '{"shard": 0, "shar'}), ["shard-0-of-2.json", "run that shard"]),
)
case(
    "merge-report-shard-counts-differ",
    lambda c: (
        shard_reports(c, {"shard-0-of-2.json": shard_report(0, 2), "shard-1-of-3.json": shard_report(1, 3)}),
        ["sharded", "one N"],
    ),
)

# ---------------------------------------------------------------- evaluate


def ev(c: Ctx, *flags, ckpt="ckpt.pt", data="data/test"):
    return ["evaluate", ckpt, data, "--no-progress", *flags, *c.params]


def ev_pair(stem, image=None, mask=None, ext=".png"):
    def build(c: Ctx):
        c.pair("test", stem, image, mask, ext)
        return ev(c), [stem]

    return build


case("evaluate-missing-folder", lambda c: (ev(c, data="no_such_dir"), ["no_such_dir"]))
case("evaluate-report-not-json", lambda c: (ev(c, "--report", "scores.txt"), ["scores.txt", ".json"]))
case("evaluate-report-exists", lambda c: (ev(c, "--report", c.file("mine.json", b"{}")), ["mine.json", "--overwrite"]))
case(
    "evaluate-report-diagram-exists",
    lambda c: (
        ev(c, "--report", str(Path(c.file("mine_reliability.png", b"png")).with_name("mine.json"))),
        ["mine_reliability.png"],
    ),
)
case("evaluate-empty-folder", lambda c: (ev(c, data=c.folder("empty_dir")), ["empty_dir"]))
case(
    "evaluate-folder-without-masks",
    lambda c: (ev(c, data=c.folder("only_images", {"images/a.png": mask_with(1)})), ["only_images"]),
)
case("evaluate-mask-value-7", lambda c: ev_pair("maskseven", mask=mask_with(7))(c))
case("evaluate-mask-size-mismatch", lambda c: ev_pair("smallmask", mask=small_mask())(c))
case("evaluate-zero-byte-mask", ev_pair("emptymask", mask=b""))
case("evaluate-zero-byte-image", ev_pair("zerobyte", image=b""))
case("evaluate-bomb-png", lambda c: ev_pair("bomb", image=bomb_png())(c))
case("evaluate-nan-float-tiff", lambda c: ev_pair("nanimage", image=all_nan_tiff(), ext=".tif")(c))
case("evaluate-checkpoint-zero-byte", lambda c: (ev(c, ckpt=c.ckpt("empty.pt", raw=b"")), ["empty.pt"]))
case("evaluate-checkpoint-list", lambda c: (ev(c, ckpt=c.ckpt("alist.pt", lambda s: ["a"])), ["alist.pt"]))
case(
    "evaluate-checkpoint-class-names-wrong-length",
    lambda c: (ev(c, ckpt=c.ckpt("classnames.pt", set_key("class_names", ["x"] * 5))), ["classnames.pt"]),
)
case("evaluate-overlap-1.5", lambda c: (ev(c, "--overlap", "1.5"), ["overlap"]))
case("evaluate-window-zero", lambda c: (ev(c, "--window", "0"), ["window"]))
case("evaluate-batch-size-negative", lambda c: (ev(c, "--batch-size", "-2"), ["batch_size"]))

# ---------------------------------------------------------------- submit

SUB = ("sub.csv",)


def sub(c: Ctx, *flags, ckpt="ckpt.pt", inputs=("data/test/images",), out="sub.csv"):
    return ["submit", ckpt, *inputs, "-o", out, "--no-progress", *flags, *c.params]


case("submit-min-area-negative", lambda c: (sub(c, "--class", "line", "--min-area", "-3"), ["min"]), SUB)
case("submit-unknown-class", lambda c: (sub(c, "--class", "bogus_class"), ["bogus_class"]), SUB)
case("submit-three-classes-without-class", lambda c: (sub(c), ["--class"]), SUB)
case("submit-window-zero", lambda c: (sub(c, "--class", "line", "--window", "0"), ["window"]), SUB)
case(
    "submit-out-exists",
    lambda c: (sub(c, "--class", "line", out=c.file("old_sub.csv", b"img,pixels\n")), ["old_sub.csv"]),
)
case("submit-out-is-a-folder", lambda c: (sub(c, "--class", "line", out=c.folder("subdir")), ["subdir"]))
case("submit-missing-test-folder", lambda c: (sub(c, "--class", "line", inputs=["no_such_dir"]), ["no_such_dir"]), SUB)
case(
    "submit-empty-test-folder",
    lambda c: (sub(c, "--class", "line", inputs=[c.folder("empty_dir")]), ["empty_dir"]),
    SUB,
)
case(
    "submit-zero-byte-image",
    lambda c: (sub(c, "--class", "line", inputs=[c.input_image("zerobyte.png", b"")]), ["zerobyte.png"]),
    SUB,
)
case(
    "submit-checkpoint-random-bytes",
    lambda c: (sub(c, "--class", "line", ckpt=c.ckpt("noise.pt", raw=os.urandom(1000))), ["noise.pt"]),
    SUB,
)
case(
    "submit-read-only-out",
    lambda c: (sub(c, "--class", "line", out=c.read_only() + "/sub.csv"), ["ro_dir"]),
    read_only=True,
)

# ---------------------------------------------------------------- export

EXP = ("model.onnx", "model.onnx.json", "model.pt", "model.pt.json")


def ex(c: Ctx, ckpt="ckpt.pt", fmt="torchscript", out="model.pt", *flags):
    return ["export", ckpt, "--format", fmt, "-o", out, *flags]


def ex_ckpt(name, change=None, raw=None):
    return lambda c: (ex(c, ckpt=c.ckpt(name, change, raw)), [name])


def ex_evil(c: Ctx):
    torch.save({"format_version": 1, "model": Evil(c.tmp / "pwned.txt")}, c.tmp / "evil.pt")
    return ex(c, ckpt=str(c.tmp / "evil.pt")), ["evil.pt"]


case("export-checkpoint-zero-byte", ex_ckpt("empty.pt", raw=b""), EXP)
case("export-checkpoint-random-bytes", ex_ckpt("noise.pt", raw=os.urandom(2048)), EXP)
case("export-checkpoint-list", ex_ckpt("alist.pt", lambda s: [1]), EXP)
case("export-checkpoint-without-model", ex_ckpt("nomodel.pt", lambda s: s.pop("model") and None), EXP)
case("export-checkpoint-weights-do-not-fit", ex_ckpt("misfit.pt", set_model_config(depth=3)), EXP)
case("export-checkpoint-model-config-wrong-type", ex_ckpt("wrongtype.pt", set_model_config(num_classes="three")), EXP)
case("export-checkpoint-preprocess-garbage", ex_ckpt("prepstring.pt", set_key("preprocess", [1, 2])), EXP)
case("export-checkpoint-evil-pickle", ex_evil, EXP)
case("export-checkpoint-missing", lambda c: (ex(c, ckpt="gone.pt"), ["gone.pt"]), EXP)
case("export-ensemble-refused", lambda c: (ex(c, ckpt="ckpt.pt,ckpt.pt"), ["ckpt.pt"]), EXP)
case("export-unknown-format", lambda c: (ex(c, fmt="caffe"), ["--format"]), EXP)
case("export-out-exists", lambda c: (ex(c, out=c.file("old_model.pt", b"previous export")), ["old_model.pt"]))
case("export-out-parent-is-a-file", lambda c: (ex(c, out=c.file("occupied.txt") + "/model.pt"), ["occupied.txt"]))
case("export-read-only-out", lambda c: (ex(c, out=c.read_only() + "/model.pt"), ["ro_dir"]), read_only=True)

# ---------------------------------------------------------------- calibrate

CAL = ("new.pt",)


def cal(c: Ctx, ckpt="ckpt.pt", out="new.pt", *flags):
    return ["calibrate", ckpt, "-o", out, *flags]


case(
    "calibrate-checkpoint-random-bytes",
    lambda c: (cal(c, ckpt=c.ckpt("noise.pt", raw=os.urandom(999))), ["noise.pt"]),
    CAL,
)
case("calibrate-checkpoint-missing", lambda c: (cal(c, ckpt="gone.pt"), ["gone.pt"]), CAL)
case(
    "calibrate-checkpoint-without-config",
    lambda c: (cal(c, ckpt=c.ckpt("noconf.pt", lambda s: s.pop("config", 1) and None)), ["noconf.pt"]),
    CAL,
)
case("calibrate-out-is-its-input", lambda c: (cal(c, "ckpt.pt", "ckpt.pt", "--overwrite"), ["ckpt.pt"]))
case("calibrate-out-exists", lambda c: (cal(c, out=c.file("taken.pt", b"mine")), ["taken.pt"]))


def with_config(state: dict) -> None:
    from unet_patches.training.config import default_config

    state["config"] = default_config().to_dict()


case(
    "calibrate-folder-missing",
    lambda c: (cal(c, c.ckpt("conf.pt", with_config), "new.pt", "--folder", "nowhere"), ["nowhere"]),
    CAL,
)
case(
    "calibrate-training-folder-missing",
    lambda c: (cal(c, c.ckpt("conf2.pt", with_config), "new.pt", "--training-folder", "gone_data"), ["gone_data"]),
    CAL,
)
case("calibrate-out-parent-is-a-file", lambda c: (cal(c, out=c.file("occupied.txt") + "/new.pt"), ["occupied.txt"]))

# ---------------------------------------------------------------- experiments

XP = ("xp_out",)


def xp_base(c: Ctx) -> dict:
    return {"base": {"training": {"folder": "train", "epochs": 1}}, "runs": {"r1": {"training": {"loss": "ce"}}}}


def xp(c: Ctx, grid, name="grid.json", *flags):
    return ["experiments", c.grid(grid, name), "-o", "xp_out", "--device", "cpu", "--no-progress", *flags, *c.params]


case(
    "experiments-grid-missing",
    lambda c: (["experiments", "nope_grid.json", "-o", "xp_out", *c.params], ["nope_grid.json"]),
    XP,
)
case("experiments-grid-not-json", lambda c: (xp(c, "{grid: yes", "broken_grid.json"), ["broken_grid.json"]), XP)
case("experiments-grid-zero-byte", lambda c: (xp(c, "", "empty_grid.json"), ["empty_grid.json"]), XP)
case("experiments-grid-json-list", lambda c: (xp(c, "[1, 2]", "list_grid.json"), ["list_grid.json"]), XP)
case("experiments-grid-unknown-key", lambda c: (xp(c, {**xp_base(c), "bogus_key": 1}), ["bogus_key"]), XP)
case(
    "experiments-grid-no-runs", lambda c: (xp(c, {"base": {}, "grid": {}}, "norun_grid.json"), ["norun_grid.json"]), XP
)
case(
    "experiments-unknown-model",
    lambda c: (xp(c, {**xp_base(c), "runs": {"r1": {"model": {"name": "nope_net"}}}}), ["nope_net"]),
    XP,
)
case(
    "experiments-run-changes-data",
    lambda c: (xp(c, {**xp_base(c), "runs": {"bigger": {"data": {"num_classes": 4}}}}), ["bigger"]),
    XP,
)
case(
    "experiments-learning-rate-infinity",
    lambda c: (
        xp(c, '{"base": {}, "runs": {"r1": {"training": {"learning_rate": Infinity}}}}'),
        ["training.learning_rate"],
    ),
    XP,
)
case(
    "experiments-run-unknown-key",
    lambda c: (xp(c, {**xp_base(c), "runs": {"r1": {"training": {"epochz": 1}}}}), ["training.epochz"]),
    XP,
)
case("experiments-one-fold", lambda c: (xp(c, xp_base(c), "grid.json", "--folds", "1"), ["folds"]), XP)
case("experiments-folds-not-a-number", lambda c: (xp(c, xp_base(c), "grid.json", "--folds", "all"), ["--folds"]), XP)
case("experiments-test-folder-missing", lambda c: (xp(c, {**xp_base(c), "test": "nowhere_test"}), ["nowhere_test"]), XP)
case(
    "experiments-base-folder-missing",
    lambda c: (xp(c, {**xp_base(c), "base": {"training": {"folder": "nowhere_train"}}}), ["nowhere_train"]),
    XP,
)
case(
    "experiments-out-is-a-file",
    lambda c: (
        ["experiments", c.grid(xp_base(c)), "-o", c.file("occupied.txt"), "--device", "cpu", *c.params],
        ["occupied.txt"],
    ),
)
case(
    "experiments-params-broken",
    lambda c: (["experiments", c.grid(xp_base(c)), "-o", "xp_out", *c.bad_params("{")], ["bad_params.json"]),
    XP,
)


# ---------------------------------------------------------------- the test


def snapshot(root: Path) -> dict[str, str]:
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != CACHE_DIR_NAME]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                files[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
            except OSError:
                files[str(path.relative_to(root))] = "unreadable"
    return files


def run_main(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


def restore_permissions(root: Path):
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o700)
    os.chmod(root, 0o700)


def test_corpus_is_large_and_covers_every_command():
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    commands = {i.split("-")[0] for i in ids}
    assert commands == {
        "generate",
        "patches",
        "inspect",
        "plan",
        "train",
        "crossval",
        "predict",
        "merge",
        "evaluate",
        "submit",
        "export",
        "calibrate",
        "experiments",
    }


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_status_2_and_no_output(bad: Case, assets, tmp_path, capsys, monkeypatch):
    if bad.read_only and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, assets)
    argv, needles = bad.build(ctx)
    existed = {out: (tmp_path / out).exists() for out in bad.outs}
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = run_main(argv)
        _, err = capsys.readouterr()
        after = snapshot(tmp_path)
    finally:
        restore_permissions(tmp_path)

    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code!r}, stderr: {err[-2000:]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-2000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    # No partial outputs: no new files, no changed ones; given outputs that were absent stay absent.
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not new, f"new files: {new[:10]}"
    assert not changed, f"changed files: {changed[:10]}"
    assert not (tmp_path / "pwned.txt").exists(), "a checkpoint ran code while loading"
    for out, was_there in existed.items():
        if not was_there:
            assert not (tmp_path / out).exists(), f"{out} was created"
