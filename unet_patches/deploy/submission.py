"""A Kaggle run-length submission: every test image predicted, one CSV row per image.

The file is what the ultrasound nerve segmentation competition reads::

    img,pixels
    1,
    2,1057 12 1477 15

``img`` is the image id (the file name without its extension), ``pixels`` the mask of one
foreground class as run-length text (:mod:`unet_patches.deploy.rle`: 1-based, column-major), empty for an
empty mask. Rows are sorted by id, numerically (``1, 2, 10``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_patches import console
from unet_patches.atomic import write_atomically
from unet_patches.data.imageio import read_image
from unet_patches.errors import UserError
from unet_patches.files.plan import expand_inputs
from unet_patches.files.sources import image_size
from unet_patches.inference.job import PredictionJob
from unet_patches.inference.segmenter import Segmenter
from unet_patches.inference.tiling.sizing import Window
from unet_patches.validate import require_int

from .rle import encode

__all__ = ["choose_class", "image_ids", "write_submission"]

HEADER = ("img", "pixels")


def choose_class(class_names: Sequence[str], name: str | None = None) -> int:
    """The index of the foreground class a submission encodes.

    ``name`` must be a class other than the background (index 0); without it a two-class model's
    only foreground class is taken.

    Raises:
        UserError: an unknown or background ``name``, or no ``name`` for a model with several
            foreground classes; the message lists the choices.
    """
    foreground = list(class_names[1:])
    choices = ", ".join(foreground)
    if name is None:
        if len(foreground) == 1:
            return 1
        raise UserError(
            f"the model has {len(foreground)} foreground classes; pick the one to submit with --class ({choices})"
        )
    if name == class_names[0]:
        raise UserError(f"--class {name} is the background class; pick a foreground class ({choices})")
    if name not in foreground:
        raise UserError(f"--class {name}: not a class of this model; pick one of {choices}")
    return foreground.index(name) + 1


def _natural_key(text: str) -> tuple:
    """``"10" > "2"`` and ``"img10" > "img2"``: digit runs compare as numbers."""
    parts = re.split(r"([0-9]+)", text)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts), text


def image_ids(files: Sequence[Path]) -> list[tuple[str, Path]]:
    """``(id, file)`` for each file, id = the file's stem, sorted by id (numerically where ids are numbers).

    Raises:
        UserError: two files with the same id (``1.tif`` and ``1.png``, or the same name in two folders).
    """
    by_id: dict[str, Path] = {}
    for path in files:
        if path.stem in by_id:
            raise UserError(
                f"{by_id[path.stem]} and {path} have the same image id {path.stem!r}; "
                "a submission needs one image per id, so give only one of them"
            )
        by_id[path.stem] = path
    return sorted(by_id.items(), key=lambda item: _natural_key(item[0]))


def _check_output(out_csv: Path, files: Sequence[Path], overwrite: bool) -> None:
    resolved = out_csv.resolve()
    for path in files:
        if resolved == path or path in resolved.parents:
            raise UserError(f"{out_csv}: would overwrite the input image {path}; choose another output file")
    if out_csv.is_dir():
        raise UserError(f"{out_csv}: is a folder; give the path of the CSV file to write")
    if out_csv.exists() and not overwrite:
        raise UserError(f"{out_csv} already exists; pass --overwrite (overwrite=True) to replace it, or choose another")
    if not out_csv.parent.is_dir():
        raise UserError(f"{out_csv.parent}: folder not found; create it or choose another output file")


def _write_atomic(out_csv: Path, rows: Sequence[tuple[str, str]]) -> None:
    """Write the CSV through a temporary file in its folder, renamed over ``out_csv`` when complete."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(rows)

    write_atomically(out_csv, write)


def write_submission(
    segmenter: Segmenter,
    inputs: Sequence[str | Path] | str | Path,
    out_csv: str | Path,
    *,
    class_name: str | None = None,
    min_area: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    window: Window = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Predict every input image and write the run-length submission ``out_csv``.

    Args:
        segmenter: from :meth:`~unet_patches.inference.segmenter.Segmenter.from_checkpoint`; each image is read
            (its ``preprocess.page``), resized and normalised as training did, and predicted
            through the tiled engine at its own size.
        inputs: a test folder, image files or glob patterns (:func:`~unet_patches.files.plan.expand_inputs`).
        out_csv: the CSV to write; written whole through a temporary file.
        class_name: the foreground class to encode (default: the only one of a two-class model).
        min_area: a predicted mask of fewer pixels is dropped whole (written empty).
        overwrite: replace an existing ``out_csv``.
        window, options: as for :func:`~unet_patches.inference.predict.evaluate_folder`.

    Returns:
        ``{"path", "rows", "empty", "dropped", "class"}``: rows written, rows with an empty mask,
        masks emptied by ``min_area``, and the class name.

    Raises:
        UserError: a bad class or ``min_area``, missing or unreadable inputs, two inputs with one id,
            or an output that exists without ``overwrite`` or is an input; checked before predicting.
    """
    min_area = require_int("min_area", min_area, 0)
    class_index = choose_class(segmenter.class_names, class_name)
    out_csv = Path(out_csv)
    ids = image_ids(expand_inputs(inputs))
    _check_output(out_csv, [path for _, path in ids], overwrite)
    sizes = [image_size(path, segmenter.preprocess.page) for _, path in ids]  # every header read first
    job = PredictionJob(segmenter, sizes, window=window, **options)
    rows: list[tuple[str, str]] = []
    empty = dropped = 0
    bar = console.progress(len(ids), "submit", "image", enabled=progress)
    for image_id, path in ids:
        raw = read_image(path, segmenter.preprocess.page)
        mask = job.labels(raw, name=str(path)) == class_index
        area = int(mask.sum())
        if 0 < area < min_area:
            # The competition's post-processing: the whole mask goes, not its small pieces, because a
            # small prediction on an image without the nerve costs more than it earns.
            mask[:] = False
            dropped += 1
        empty += not mask.any()
        rows.append((image_id, encode(mask)))
        bar.update(1)
    bar.close()
    _write_atomic(out_csv, rows)
    return {
        "path": str(out_csv),
        "rows": len(rows),
        "empty": empty,
        "dropped": dropped,
        "class": segmenter.class_names[class_index],
    }
