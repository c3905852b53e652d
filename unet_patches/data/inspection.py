"""Inspecting a data folder before training: every file read once, every problem listed at once.

:func:`inspect_folder` reports on an image folder (``images/`` + ``masks/`` or the Kaggle layout,
see :mod:`unet_patches.data.folders`) or a patch folder (``manifest.json``, see
:mod:`unet_patches.data.patches`): counts and unmatched files, sizes, pixel types, channels and value
ranges, raw mask values and class shares after the mask tables, and the training / validation
split. A *problem* is something training would stop on (an unreadable file, a mask of another
size, an image smaller than the patch, a mask value the tables cannot map, ...); a *warning* is
worth knowing but harmless (a 16-bit image that uses 5 % of its range). :func:`check_folder` raises
one ``UserError`` summarising the problems; ``unet-patches inspect`` prints them all.

Files are read through the folder's decode cache (:class:`~unet_patches.data.cache.DecodeCache`, unless
``data.cache`` is false), one pair at a time, so inspecting fills the cache training then uses and
memory stays flat.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.console import progress
from unet_patches.errors import UserError

from .cache import DecodeCache
from .config import DataConfig
from .folders import MASK_SUFFIX, Matching, Pair, match_pairs, split_by_group
from .imageio import image_to_array
from .masks import hex_colour
from .normalize import NORMALIZE_MODES
from .patch_folder import MANIFEST_NAME, read_manifest, split_by_source
from .preprocess import Preprocess

__all__ = ["Report", "check_folder", "format_report", "inspect_folder"]

LOW_RANGE_SHARE = 0.25  # integer images using less of their type's range than this get a warning
SHOWN_PROBLEMS = 3  # problems quoted in check_folder's one-line message


@dataclass
class Report:
    """What :func:`inspect_folder` found. ``sizes`` holds ``[min, median, max]`` of ``height`` and
    ``width``; ``value_ranges`` the overall ``[min, max]`` per dtype and ``range_share`` the share of
    the dtype's range that spans (integer dtypes); ``class_shares`` the share of mask pixels per
    class name; ``split`` the counts on each side of training's split."""

    folder: str
    kind: str  # "images" (full images, patches sampled on the fly) or "patches" (a patch folder)
    layout: str  # "images-masks", "kaggle" or "patches"
    counts: dict[str, int] = field(default_factory=dict)
    unmatched_images: list[str] = field(default_factory=list)
    unmatched_masks: list[str] = field(default_factory=list)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    value_ranges: dict[str, list[float]] = field(default_factory=dict)
    range_share: dict[str, float] = field(default_factory=dict)
    mask_values: list[int | float | str] = field(default_factory=list)
    class_shares: dict[str, float] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: channel counts keyed by strings."""
        values = asdict(self)
        values["channels"] = {str(k): v for k, v in self.channels.items()}
        return values


@dataclass
class _Tally:
    """What the scan of an image folder adds up, one pair at a time."""

    num_classes: int
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    dtypes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    ranges: dict[str, list] = field(default_factory=dict)
    mask_values: set = field(default_factory=set)
    class_pixels: np.ndarray | None = None

    def add_image(self, raw: np.ndarray) -> None:
        self.heights.append(int(raw.shape[0]))
        self.widths.append(int(raw.shape[1]))
        self.dtypes[str(raw.dtype)] += 1
        self.channels[1 if raw.ndim == 2 else int(raw.shape[-1])] += 1
        if not _is_real(raw):
            return  # complex values have no order; image_to_array reports the pixel type
        values = raw[np.isfinite(raw)] if np.issubdtype(raw.dtype, np.floating) else raw
        if values.size:
            low, high = values.min().item(), values.max().item()
            seen = self.ranges.setdefault(str(raw.dtype), [low, high])
            seen[:] = [min(seen[0], low), max(seen[1], high)]

    def add_labels(self, labels: np.ndarray) -> None:
        counts = np.bincount(labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        self.class_pixels = counts if self.class_pixels is None else self.class_pixels + counts


@dataclass(frozen=True)
class _Expected:
    """What training expects of the folder: the data settings, the patch size, the validation split."""

    data: DataConfig
    patch_size: int
    val_fraction: float
    seed: int


def inspect_folder(folder: str | Path, data: DataConfig, *, patch_size: int, val_fraction: float, seed: int) -> Report:
    """Report on the data folder ``folder`` as training would read it: with the ``data`` settings,
    patches of ``patch_size``, and ``val_fraction`` of the images (or source images) held back by the
    split of ``seed``. Problems with the files are collected in ``Report.problems``, not raised.
    Raises ``UserError`` when ``folder`` does not exist.
    """
    config = _Expected(data, patch_size, val_fraction, seed)
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: data folder not found; check the path (relative paths are also tried under data.root)"
        )
    if (folder / MANIFEST_NAME).is_file():
        report = Report(str(folder), "patches", "patches")
        _inspect_patches(folder, config, report)
    else:
        report = Report(str(folder), "images", "images-masks")
        _inspect_images(folder, config, report)
    return report


def check_folder(folder: str | Path, data: DataConfig, **expected: Any) -> Report:
    """:func:`inspect_folder`, raising one ``UserError`` that quotes the first problems when there are any."""
    report = inspect_folder(folder, data, **expected)
    problems = report.problems
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (" ..." if len(problems) > SHOWN_PROBLEMS else "")
        raise UserError(
            f"{folder}: {len(problems)} problem(s) found before training: {shown}; "
            f"run `unet-patches inspect {folder}` for the full list"
        )
    return report


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _inspect_images(folder: Path, config: _Expected, report: Report) -> None:
    matching = match_pairs(folder)
    report.layout = matching.layout
    report.problems.extend(matching.problems)
    _report_unmatched(matching, report)
    preprocess = config.data.preprocess()
    reader = DecodeCache(folder if config.data.cache else None)
    tally = _Tally(preprocess.num_classes)
    bar = progress(len(matching.pairs), f"inspect {folder}", "images")
    for pair in matching.pairs:
        report.problems.extend(_check_pair(pair, reader, preprocess, config.patch_size, tally))
        bar.update()
    bar.close()
    _summarise(tally, report, config)
    if matching.pairs:
        groups = [pair.group for pair in matching.pairs]
        train, val = split_by_group(groups, config.val_fraction, config.seed)
        report.split = {
            "unit": "images",
            "train": len(train),
            "val": len(val),
            "train_groups": len({groups[i] for i in train}),
            "val_groups": len({groups[i] for i in val}),
            "groups": len(set(groups)),
        }
        _warn_no_validation(report, config.val_fraction)


def _report_unmatched(matching: Matching, report: Report) -> None:
    pairs = len(matching.pairs)
    report.counts = {
        "images": pairs + len(matching.lonely_images),
        "masks": pairs + len(matching.lonely_masks),
        "pairs": pairs,
    }
    report.unmatched_images = list(matching.lonely_images)
    report.unmatched_masks = list(matching.lonely_masks)
    kaggle = matching.layout == "kaggle"
    for name in matching.lonely_images:
        wanted = f"{Path(name).stem}{MASK_SUFFIX}" if kaggle else "of the same name (or name_mask) to masks/"
        report.problems.append(f"{matching.images_dir / name}: image without a mask; add a mask {wanted}")
    for name in matching.lonely_masks:
        stem, suffix = Path(name).stem, Path(name).suffix
        wanted = stem[: -len(MASK_SUFFIX)] + suffix if kaggle else "of the same name to images/"
        report.problems.append(
            f"{matching.masks_dir / name}: mask without an image; add an image {wanted} or remove it"
        )


def _read(reader: DecodeCache, path: Path, problems: list[str], **options: Any) -> np.ndarray | None:
    try:
        return reader.read(path, **options)
    except UserError as exc:
        problems.append(str(exc))
        return None


def _check_pair(pair: Pair, reader: DecodeCache, preprocess: Preprocess, patch_size: int, tally: _Tally) -> list[str]:
    """The problems of one pair, its facts added to ``tally``. Each file is read once."""
    problems: list[str] = []
    image = _read(reader, pair.image, problems, page=preprocess.page)
    raw_mask = _read(reader, pair.mask, problems, **preprocess.mask_reading())
    if image is not None:
        tally.add_image(image)
        try:
            image_to_array(image, preprocess.in_channels, str(pair.image))  # refuses channels, dtypes, NaN
        except UserError as exc:
            problems.append(str(exc))
        height, width = preprocess.resize or image.shape[:2]
        if height < patch_size or width < patch_size:
            after = " after data.resize" if preprocess.resize else ""
            problems.append(
                f"{pair.image}: image is {height}x{width} (HxW{after}), smaller than the {patch_size}x{patch_size} "
                "patches (patches.patch_size); use a smaller patch size or drop the image"
            )
    if raw_mask is not None:
        tally.mask_values |= _raw_values(raw_mask)
        try:
            labels = preprocess.mask(raw_mask, pair.mask)
            tally.add_labels(labels)
        except UserError as exc:
            problems.append(str(exc))
    if image is not None and raw_mask is not None and image.shape[:2] != raw_mask.shape[:2]:
        problems.append(
            f"{pair.mask}: mask is {raw_mask.shape[0]}x{raw_mask.shape[1]} (HxW) but its image {pair.image.name} "
            f"is {image.shape[0]}x{image.shape[1]}; image and mask must have the same size"
        )
    return problems


def _is_real(raw: np.ndarray) -> bool:
    """Whether the pixels are bool, integer or real float: values that can be ordered."""
    return raw.dtype.kind in "biuf"


def _raw_values(raw: np.ndarray) -> set:
    """The values of a raw mask before the tables: gray levels, or ``#rrggbb`` for colour masks;
    none for a pixel type that is not real (the mask tables report it)."""
    if not _is_real(raw):
        return set()
    if raw.ndim == 3 and raw.shape[-1] in (2, 4):
        raw = raw[..., :-1]  # alpha is ignored, as decode_mask does
    if raw.ndim == 3 and (raw.shape[-1] == 1 or all(np.array_equal(raw[..., 0], raw[..., c]) for c in (1, 2))):
        raw = raw[..., 0]
    if raw.ndim == 3:
        return {hex_colour(colour) for colour in np.unique(raw.reshape(-1, 3), axis=0)}
    return set(np.unique(raw).tolist())


def _summarise(tally: _Tally, report: Report, config: _Expected) -> None:
    """The tally's totals into ``report``, with the warnings they call for."""
    if tally.heights:
        report.sizes = {
            name: [int(min(v)), int(np.median(v)), int(max(v))]
            for name, v in (("height", tally.heights), ("width", tally.widths))
        }
    report.dtypes = dict(sorted(tally.dtypes.items()))
    report.channels = dict(sorted(tally.channels.items()))
    report.value_ranges = {dtype: list(bounds) for dtype, bounds in sorted(tally.ranges.items())}
    report.mask_values = sorted(tally.mask_values, key=lambda v: (isinstance(v, str), v))
    if tally.class_pixels is not None and tally.class_pixels.sum():
        shares = tally.class_pixels / tally.class_pixels.sum()
        report.class_shares = {name: float(s) for name, s in zip(config.data.names(), shares)}
        absent = [name for name, share in report.class_shares.items() if share == 0]
        if absent:
            report.warnings.append(
                f"no pixel of class {', '.join(absent)} in any mask: check the masks and data.mask_values / "
                "data.mask_colors (the model cannot learn a class it never sees)"
            )
    _range_use(report, config.data.normalize)


def _range_use(report: Report, normalize: str) -> None:
    """The share of their type's range that integer images span; a warning when it is small."""
    for dtype, (low, high) in report.value_ranges.items():
        if not np.issubdtype(np.dtype(dtype), np.integer):
            continue
        info = np.iinfo(np.dtype(dtype))
        share = (high - low) / (info.max - info.min)
        report.range_share[dtype] = share
        if share < LOW_RANGE_SHARE:
            stretching = [mode.name for mode in NORMALIZE_MODES.values() if mode.stretches]
            hint = (
                f"data.normalize: {normalize} stretches each image to its own range"
                if NORMALIZE_MODES[normalize].stretches
                else f"with data.normalize: {normalize} the network sees low contrast; "
                f"consider data.normalize: {' or '.join(stretching)}"
            )
            report.warnings.append(
                f"{dtype} images use values {low}-{high}, {100 * share:.0f} % of the {dtype} range; {hint}"
            )


def _warn_no_validation(report: Report, val_fraction: float) -> None:
    if val_fraction > 0 and report.split.get("val") == 0:
        report.warnings.append(
            f"no validation {report.split['unit']}: the folder has a single group (subject or source image), "
            "so training runs without validation"
        )


# --------------------------------------------------------------------------------------------------
# Patch folders
# --------------------------------------------------------------------------------------------------


def _inspect_patches(folder: Path, config: _Expected, report: Report) -> None:
    try:
        manifest = read_manifest(folder)
    except UserError as exc:
        report.problems.append(str(exc))
        return
    d = config.data
    records = manifest["patches"]
    info = manifest["sources"] if isinstance(manifest.get("sources"), dict) else {}
    group = {p["source"]: str((info.get(p["source"]) or {}).get("group") or p["source"]) for p in records}
    size, channels, classes = int(manifest["patch_size"]), int(manifest["in_channels"]), int(manifest["num_classes"])
    report.counts = {
        "patches": len(records),
        "sources": len(group),
        "groups": len(set(group.values())),
        "classes": classes,
    }
    report.sizes = {"height": [size] * 3, "width": [size] * 3}
    report.channels = {channels: len(records)}
    if channels != d.in_channels or classes != d.num_classes:
        report.problems.append(
            f"{folder / MANIFEST_NAME}: patches have {channels} channel(s) and {classes} classes, but "
            f"data.in_channels = {d.in_channels} and data.num_classes = {d.num_classes}; make the settings match"
        )
    pixels = np.asarray(manifest.get("class_pixels") or [], dtype=np.float64)
    if pixels.size == classes and pixels.sum():
        names = d.names() if classes == d.num_classes else [f"class{c}" for c in range(classes)]
        report.class_shares = {name: float(s) for name, s in zip(names, pixels / pixels.sum())}
    if not records:
        report.problems.append(f"{folder / MANIFEST_NAME}: lists no patches; make the patch folder again")
    report.problems.extend(_missing_patch_files(folder, records, str(manifest.get("image_suffix", ".png"))))
    train, val = split_by_source(manifest, config.val_fraction, config.seed)
    source = {p["name"]: p["source"] for p in records}
    sides = [{source[name] for name in names} for names in (train, val)]
    report.split = {
        "unit": "patches",
        "train": len(train),
        "val": len(val),
        "train_sources": len(sides[0]),
        "val_sources": len(sides[1]),
        "train_groups": len({group[s] for s in sides[0]}),
        "val_groups": len({group[s] for s in sides[1]}),
        "groups": report.counts["groups"],
    }
    _warn_no_validation(report, config.val_fraction)


def _missing_patch_files(folder: Path, records: list[dict], image_suffix: str) -> list[str]:
    """One problem per missing patch file (their contents are written by our own code, so not read)."""
    paths = [folder / "images" / f"{record['name']}{image_suffix}" for record in records]
    paths += [folder / "masks" / f"{record['name']}.png" for record in records]
    fix = f"listed in {MANIFEST_NAME} but missing; make the patch folder again"
    return [f"{path}: {fix}" for path in paths if not path.is_file()]


# --------------------------------------------------------------------------------------------------
# The report as text
# --------------------------------------------------------------------------------------------------


def _counted(counts: dict, unit: str = "") -> str:
    return ", ".join(f"{key}{unit} x{n}" for key, n in counts.items())


def _image_lines(report: Report) -> list[tuple[str, str]]:
    c, lonely = report.counts, (len(report.unmatched_images), len(report.unmatched_masks))
    files = (
        f"{c['images']} images, {c['masks']} masks, {c['pairs']} pairs; {lonely[0]} image(s) and {lonely[1]} mask(s)"
    )
    lines = [("files", f"{files} unmatched")]
    if report.sizes:
        (h0, h1, h2), (w0, w1, w2) = report.sizes["height"], report.sizes["width"]
        lines.append(("sizes", f"height {h0} / {h1} / {h2}, width {w0} / {w1} / {w2} (min / median / max)"))
        shares = {dtype: f" ({100 * share:.0f} % of its range)" for dtype, share in report.range_share.items()}
        ranges = ", ".join(f"{t} {low}-{high}{shares.get(t, '')}" for t, (low, high) in report.value_ranges.items())
        lines.append(("pixels", f"{_counted(report.dtypes)}; {_counted(report.channels, ' channel(s)')}; {ranges}"))
    if report.mask_values:
        shown = ", ".join(str(v) for v in report.mask_values[:16])
        more = f" ... ({len(report.mask_values)} values)" if len(report.mask_values) > 16 else ""
        lines.append(("masks", f"raw values {shown}{more}"))
    return lines


def _patch_lines(report: Report) -> list[tuple[str, str]]:
    c, size, channels = report.counts, report.sizes["height"][0], next(iter(report.channels))
    text = f"{c['patches']} patches of {size}x{size} from {c['sources']} source images ({c['groups']} groups)"
    return [("patches", f"{text}; {channels} channel(s), {c['classes']} classes")]


def _split_line(split: dict) -> str:
    text = f"{split['train']} training / {split['val']} validation {split['unit']}"
    if "train_sources" in split:
        text += f" ({split['train_sources']} / {split['val_sources']} source images)"
    elif split["groups"] < split["train"] + split["val"]:
        text += f" ({split['train_groups']} / {split['val_groups']} subjects)"
    return text


def format_report(report: Report) -> str:
    """The report as text: a few aligned lines of facts, then the warnings and problems, one a line."""
    if report.kind == "patches":
        kind, lines = "patch folder", _patch_lines(report) if report.counts else []
    else:
        kind, lines = f"{report.layout} layout", _image_lines(report)
    if report.class_shares:
        lines.append(("classes", ", ".join(f"{name} {100 * s:.1f} %" for name, s in report.class_shares.items())))
    if report.split:
        lines.append(("split", _split_line(report.split)))
    out = [f"{report.folder} ({kind})"] + [f"  {label:<8} {text}" for label, text in lines]
    for title, items in (("Warnings", report.warnings), ("Problems", report.problems)):
        if items:
            out += [f"{title} ({len(items)}):"] + [f"  - {item}" for item in items]
    out.append("Training would stop on this folder." if report.problems else "No problems found.")
    return "\n".join(out)
