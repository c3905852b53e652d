"""``generate`` (a synthetic data set) and ``patches`` (random patches with flips, on disk)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unet_patches.data.config import SYNTHETIC_KINDS
from unet_patches.data.pixel_weights import PIXEL_WEIGHTS
from unet_patches.errors import UserError

from .flags import add_data_settings, add_params, config_from_args, overrides_from, setting, switch

__all__ = ["add_generate", "add_patches"]


def add_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="write a synthetic data set (lines and ellipses, or nuclei)",
        description="Write train/ and test/ folders of images/ and masks/ PNGs of synthetic data: lines "
        "(class 1) and ellipses (class 2) of random gray on a noisy background (--kind shapes, the default), "
        "or, with --kind nuclei, fluorescence-like images of touching nuclei (classes background, interior, "
        "boundary; 16-bit images using a small part of their range; instance masks in instances/; settings "
        "in the nuclei section).",
    )
    p.add_argument(
        "-o", "--out", default=None, help="output folder (default: <data.root>/synthetic, or <data.root>/nuclei)"
    )
    setting(p, "--kind", key="synthetic.kind", choices=SYNTHETIC_KINDS, help="what to draw: shapes or nuclei")
    switch(p, "--no-instances", key="nuclei.instances", value=False, help="nuclei: no instance masks (instances/)")
    setting(p, "--n-train", key="synthetic.n_train", type=int, help="training images")
    setting(p, "--n-test", key="synthetic.n_test", type=int, help="test images")
    setting(p, "--seed", key="synthetic.seed", type=int, help="random seed")
    setting(p, "--height", key="synthetic.height", type=int, help="image height in pixels")
    setting(p, "--width", key="synthetic.width", type=int, help="image width in pixels")
    setting(p, "--lines", key="synthetic.lines", type=int, nargs=2, metavar=("MIN", "MAX"), help="lines per image")
    setting(
        p, "--ellipses", key="synthetic.ellipses", type=int, nargs=2, metavar=("MIN", "MAX"), help="ellipses per image"
    )
    setting(
        p,
        "--shape-gray",
        key="synthetic.shape_gray",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="shape intensity range",
    )
    setting(
        p,
        "--background-mean",
        key="synthetic.background_mean",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="background mean range",
    )
    setting(p, "--noise-std", key="synthetic.noise_std", type=float, help="background noise standard deviation")
    p.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=None,
        help="bits per image pixel, masks staying 8-bit (default: 8 for shapes, nuclei.bit_depth for nuclei)",
    )
    p.add_argument(
        "--max-value",
        type=int,
        default=None,
        help="stored value of white (default: 255 or 65535 for shapes, nuclei.max_value for nuclei); e.g. 3000 "
        "mimics a 16-bit scan using a part of its range",
    )
    p.add_argument(
        "--kaggle",
        action="store_true",
        help="write the Kaggle ultrasound-nerve layout instead: train/<subject>_<n>.tif + _mask.tif (0/255), "
        "test/<id>.tif; n-train images over 5 subjects",
    )
    p.add_argument("--overwrite", action="store_true", help="replace train/ and test/ in a non-empty output folder")
    add_params(p)
    p.set_defaults(run=_generate)


def _generate(args: argparse.Namespace) -> int:
    from unet_patches.data.synthetic import generate_dataset, generate_kaggle_layout

    config = config_from_args(args)
    s = config.synthetic
    out = Path(args.out) if args.out else Path(config.data.root) / ("synthetic" if s.kind == "shapes" else s.kind)
    if s.kind == "nuclei":
        if args.kaggle:
            raise UserError("--kaggle writes the shapes in the Kaggle layout; drop --kind nuclei or --kaggle")
        return _generate_nuclei(args, config, out)
    if args.kaggle:
        subjects = min(5, max(1, s.n_train))
        summary = generate_kaggle_layout(
            out, subjects, max(1, s.n_train // subjects), s.n_test, s.seed, s.spec(), overwrite=args.overwrite
        )
        print(
            f"wrote {summary['train']} training images of {subjects} subjects and {summary['test']} test images "
            f"to {out} in the Kaggle layout (foreground {100 * summary['foreground_share']:.1f} %)"
        )
        return 0
    options = {**s.dataset_options(), "bit_depth": args.bit_depth or 8, "max_value": args.max_value}
    summary = generate_dataset(out, overwrite=args.overwrite, **options)
    shares = ", ".join(f"{n} {100 * v:.1f} %" for n, v in zip(summary["class_names"], summary["class_shares"]))
    print(f"wrote {s.n_train} training and {s.n_test} test images to {out} ({shares})")
    return 0


def _generate_nuclei(args: argparse.Namespace, config: Any, out: Path) -> int:
    """``generate --kind nuclei``: the ``nuclei`` spec, sized by ``--height`` / ``--width`` if given."""
    from dataclasses import replace

    from unet_patches.data.nuclei import generate_nuclei
    from unet_patches.data.synthetic import prepare_output

    s, spec = config.synthetic, config.nuclei.spec()
    given = overrides_from(args).get("synthetic", {})
    size = {key: given[key] for key in ("height", "width") if key in given}
    depth = {"bit_depth": args.bit_depth} if args.bit_depth else {}
    depth.update({"max_value": args.max_value} if args.max_value else {})
    spec = replace(spec, **size, **depth).validate()
    prepare_output(out, args.overwrite)
    summary = generate_nuclei(out, s.n_train, s.n_test, s.seed, spec, instances=config.nuclei.instances)
    shares = ", ".join(f"{n} {100 * v:.1f} %" for n, v in zip(summary["class_names"], summary["class_shares"]))
    print(
        f"wrote {s.n_train} training and {s.n_test} test images of nuclei to {out} ({shares}; "
        f"{summary['objects_per_image']:.0f} nuclei per image)"
    )
    return 0


def add_patches(sub: Any) -> None:
    p = sub.add_parser(
        "patches",
        help="cut random patches (with flips) from an images/+masks/ folder",
        description="Cut random windows fully inside each image, keep those with foreground, store "
        "each in 4 flip variants as OUT/images/pN.png + OUT/masks/pN.png, with "
        "OUT/manifest.json recording each patch's source image.",
    )
    p.add_argument(
        "source", help="data folder: images/ + masks/ (e.g. data/synthetic/train), or X.tif + X_mask.tif (Kaggle)"
    )
    p.add_argument("-o", "--out", default=None, help="output folder (default: <data.root>/patches_s<size>)")
    setting(p, "-s", "--size", key="patches.patch_size", type=int, help="patch size")
    setting(p, "-n", "--per-image", key="patches.per_image", type=int, help="random windows per image")
    switch(p, "--all-windows", key="patches.foreground_only", value=False, help="keep windows without foreground too")
    switch(p, "--no-flips", key="patches.flips", value=False, help="store each window once instead of 4 flip variants")
    setting(
        p,
        "--resize-width",
        key="patches.resize_width",
        type=int,
        help="resize images to this width first (the original used 256)",
    )
    setting(p, "--seed", key="patches.seed", type=int, help="random seed")
    setting(
        p,
        "--pixel-weights",
        key="training.pixel_weights",
        choices=PIXEL_WEIGHTS.names,
        help="unet: store each patch's pixel weights too (weights/), for training with --pixel-weights unet",
    )
    add_data_settings(p)
    p.add_argument("--overwrite", action="store_true", help="replace patches in a non-empty output folder")
    add_params(p)
    p.set_defaults(run=_patches)


def _patches(args: argparse.Namespace) -> int:
    from unet_patches.data.patches import extract_patches

    config = config_from_args(args)
    c = config.patches
    out = Path(args.out) if args.out else Path(config.data.root) / f"patches_s{c.patch_size}"
    summary = extract_patches(args.source, out, overwrite=args.overwrite, **config.patch_options())
    print(
        f"kept {summary['windows_kept']} of {summary['windows_drawn']} windows from {summary['sources']} images; "
        f"wrote {summary['patches']} patches to {out}"
    )
    return 0
