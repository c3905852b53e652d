"""On-the-fly patch sampling from full images held in memory, and class weights.

`RandomPatches` draws a fresh random window (optionally forced onto foreground,
nnU-Net style) for every index of every epoch; `FixedWindows` is the matching
validation set whose windows never change. Both read from arrays in memory, so
there is no round trip through patch files on disk.

Reproducibility contract of `RandomPatches`: everything about sample ``i`` of
epoch ``e`` comes from ``numpy.random.default_rng([seed, e, i])`` and nothing
else. The samples are therefore identical whatever the number of DataLoader
workers, the order they run in, or how a `DistributedSampler` shards the
indices, and resuming at epoch ``e`` reproduces that epoch exactly.

Errors: settings (patch size, seed, counts, fractions) and an image smaller than
the patch raise `UserError`; arrays of the wrong shape or dtype, mismatched
lists and mask values outside the classes raise plain `ValueError`, because the
loaders (`folders.load_pairs`, `imageio.read_mask`) have already checked the
user's files and such arrays mean a programming error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from unet_patches.errors import UserError
from unet_patches.validate import require_int, require_number

from .class_weights import check_mask_values

# Bits of `Window.flip`.
FLIP_LR = 1  # mirror the columns (left <-> right)
FLIP_UD = 2  # mirror the rows (up <-> down)


class Window(NamedTuple):
    """Where one sample comes from and how it is transformed.

    The window is ``image[:, y:y + p, x:x + p]`` of image ``image_index``. Then
    ``flip`` is applied (a bit set: 1 = left-right, 2 = up-down, so 0..3), then
    ``rot`` quarter turns counter-clockwise (`numpy.rot90` on the last two axes).
    For whole images (`FixedWindows` with ``patch_size=None``) y = x = 0.
    """

    image_index: int
    y: int
    x: int
    flip: int
    rot: int


# ---------------------------------------------------------------- validation


def _as_images_and_masks(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check and return the images as float32 (C,H,W) and masks as integer (H,W) arrays.

    Raises:
        UserError: no images (left for training by the user's data and settings).
        ValueError: different list lengths, wrong dimensions or dtypes, an image
            and its mask of different sizes, or different channel counts.
    """
    if len(images) != len(masks):
        raise ValueError(
            f"got {len(images)} images but {len(masks)} masks; expected one mask per image, "
            "pass the lists in matching order"
        )
    if len(images) == 0:
        raise UserError("got no images; expected at least one image and mask to sample from")
    out_images, out_masks = [], []
    for j, (image, mask) in enumerate(zip(images, masks)):
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 3:
            raise ValueError(
                f"image {j} has shape {image.shape}; expected (C, H, W), convert it with imageio.image_to_array"
            )
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(
                f"image {j} has dtype {image.dtype}; expected float32 values in [0, 1], "
                "convert it with imageio.image_to_array"
            )
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"mask {j} has shape {mask.shape} and dtype {mask.dtype}; expected an integer "
                "(H, W) array of class indices, read it with imageio"
            )
        if image.shape[1:] != mask.shape:
            raise ValueError(
                f"image {j} is {image.shape[1]}x{image.shape[2]} but its mask is "
                f"{mask.shape[0]}x{mask.shape[1]} (HxW); expected the same size, check the pairing"
            )
        out_images.append(image.astype(np.float32, copy=False))
        out_masks.append(mask)
    channels = {image.shape[0] for image in out_images}
    if len(channels) > 1:
        raise ValueError(
            f"images have different channel counts {sorted(channels)}; expected one count, "
            "convert them all with the same in_channels"
        )
    return out_images, out_masks


def _as_weights(weights: Sequence[np.ndarray] | None, masks: list[np.ndarray]) -> list[np.ndarray] | None:
    """The pixel weights as float32 maps, one per mask and of its size (a mismatch is a programming error)."""
    if weights is None:
        return None
    if len(weights) != len(masks) or any(np.shape(w) != m.shape for w, m in zip(weights, masks)):
        raise ValueError(f"{len(weights)} weight maps for {len(masks)} masks; expected one of each mask's size")
    return [np.asarray(w, dtype=np.float32) for w in weights]


def _check_patch_fits(images: list[np.ndarray], patch_size: int) -> None:
    """Raise `UserError` for a ``patch_size`` that is not an integer >= 1, or naming the first
    image smaller than ``patch_size`` on either side."""
    require_int("patch_size", patch_size, 1)
    for j, image in enumerate(images):
        h, w = image.shape[1:]
        if h < patch_size or w < patch_size:
            raise UserError(
                f"image {j} is {h}x{w} (HxW), smaller than patch_size={patch_size}; expected "
                f"both sides >= {patch_size}, use a smaller patch_size or drop that image"
            )


# ------------------------------------------------------------------ cropping


def _crop(
    image: np.ndarray, mask: np.ndarray, window: Window, size: tuple[int, int], weights: np.ndarray | None = None
) -> tuple[torch.Tensor, ...]:
    """Cut ``window`` out of an image, its mask and its pixel weights (if any) and apply its flip and
    rotation to all of them together.

    Returns:
        image float32 tensor (C, h, w), mask int64 tensor (h, w) and, with ``weights``, the pixel
        weights float32 (h, w); contiguous and never sharing memory with the inputs.
    """
    h, w = size
    rows, cols = slice(window.y, window.y + h), slice(window.x, window.x + w)
    planes = [image[:, rows, cols], mask[rows, cols]] + ([] if weights is None else [weights[rows, cols]])
    for k, plane in enumerate(planes):
        if window.flip & FLIP_LR:
            plane = plane[..., ::-1]
        if window.flip & FLIP_UD:
            plane = plane[..., ::-1, :]
        if window.rot:
            plane = np.rot90(plane, window.rot, axes=(-2, -1))
        planes[k] = plane
    # np.array(copy=True) gives a C-contiguous copy: the caller may modify the
    # tensors without touching the images the dataset holds.
    dtypes = (np.float32, np.int64, np.float32)
    return tuple(torch.from_numpy(np.array(a, dtype=t, order="C", copy=True)) for a, t in zip(planes, dtypes))


def _foreground_pixels(mask: np.ndarray, num_classes: int, ignore_index: int | None) -> dict[int, np.ndarray]:
    """Flat indices of each foreground class (1..K-1) present in ``mask``.

    One stable sort groups the pixels by class (radix sort for uint8 masks), so
    this costs a single pass rather than one per class.
    """
    flat = mask.ravel()
    if ignore_index is not None and ignore_index < 0:
        # bincount takes no negative values; the ignored pixels are never foreground anyway.
        flat = np.where(flat == ignore_index, 0, flat)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index_dtype = np.int32 if flat.size < 2**31 else np.int64
    return {
        c: order[starts[c] : starts[c] + counts[c]].astype(index_dtype)
        for c in range(1, num_classes)
        if counts[c] > 0 and c != ignore_index
    }


# ------------------------------------------------------------------ datasets


class RandomPatches(Dataset):
    """Random square windows cut on the fly from full images, new ones every epoch.

    Sample ``i`` of epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e, i])``
    alone, in this order:

    1. an image, with probability proportional to its area (H x W), so every
       pixel of the data set is about equally likely to be seen, whatever the
       mix of image sizes;
    2. with probability ``foreground_fraction``: a foreground class chosen
       uniformly among the classes 1..K-1 present in that image, a pixel of that
       class chosen uniformly, and the window centred on it (shifted to stay
       inside the image, so it always contains that pixel); an image without
       foreground falls back to step 3;
    3. otherwise a window position uniform over all positions fully inside;
    4. one of the four flips (none, left-right, up-down, both) uniformly when
       ``flips``, then 0-3 quarter turns uniformly when ``rotate90``.

    Class 0 is the background. The foreground pixel positions are found once,
    in ``__init__``, and only when ``foreground_fraction > 0``.

    Call `set_epoch` before each epoch. The DataLoader copies the dataset into
    its workers when an epoch's iteration starts, so this works with the default
    ``persistent_workers=False``; persistent workers keep the epoch they were
    started with.

    Args:
        images: float32 arrays (C, H, W), values in [0, 1]; held, not copied.
        masks: integer arrays (H, W) of class indices, one per image.
        patch_size: side p of the square windows; every image must be at least p x p.
        samples_per_epoch: the dataset's length.
        num_classes: K, background included; mask values must be below it.
        flips: random flips as described above.
        rotate90: random quarter turns as described above.
        foreground_fraction: probability in [0, 1] that a window is centred on foreground.
        seed: integer >= 0.
        ignore_index: a mask value that is allowed although >= K and is never foreground.
        weights: pixel weights, float (H, W) per image (:mod:`.pixel_weights`), cut and flipped with
            the window and returned as a third item; None: items are (image, mask).

    Raises:
        UserError: a setting out of range, no images, or an image smaller than the patch.
        ValueError: images or masks of the wrong shape or dtype, mismatched
            images and masks, or a mask value outside [0, K).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        patch_size: int,
        samples_per_epoch: int,
        *,
        num_classes: int,
        flips: bool = True,
        rotate90: bool = False,
        foreground_fraction: float = 0.0,
        seed: int = 0,
        ignore_index: int | None = None,
        weights: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.images, self.masks = _as_images_and_masks(images, masks)
        self.weights = _as_weights(weights, self.masks)
        _check_patch_fits(self.images, patch_size)
        self.patch_size = int(patch_size)
        self.samples_per_epoch = require_int("samples_per_epoch", samples_per_epoch, 1)
        self.num_classes = require_int("num_classes", num_classes, 1)
        self.foreground_fraction = require_number("foreground_fraction", foreground_fraction, 0, 1)
        self.flips = bool(flips)
        self.rotate90 = bool(rotate90)
        self.seed = require_int("seed", seed, 0)
        self.ignore_index = ignore_index
        self.epoch = 0
        check_mask_values(self.masks, self.num_classes, ignore_index)

        areas = np.array([m.size for m in self.masks], dtype=np.float64)
        self._image_probs = areas / areas.sum()
        self._foreground: list[dict[int, np.ndarray]] = (
            [_foreground_pixels(m, self.num_classes, ignore_index) for m in self.masks]
            if self.foreground_fraction > 0
            else [{} for _ in self.masks]
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (an integer >= 0)."""
        self.epoch = require_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def window(self, i: int, epoch: int | None = None) -> Window:
        """The window of sample ``i`` in ``epoch`` (default: the current epoch).

        Raises:
            IndexError: ``i`` outside [0, len(self)).
        """
        if not 0 <= i < self.samples_per_epoch:
            raise IndexError(f"sample {i} out of range for {self.samples_per_epoch} samples")
        epoch = self.epoch if epoch is None else require_int("epoch", epoch, 0)
        rng = np.random.default_rng([self.seed, epoch, int(i)])
        p = self.patch_size

        j = int(rng.choice(len(self.images), p=self._image_probs))
        h, w = self.masks[j].shape
        foreground = self._foreground[j]
        if foreground and rng.random() < self.foreground_fraction:
            classes = sorted(foreground)
            pixels = foreground[classes[int(rng.integers(len(classes)))]]
            cy, cx = divmod(int(pixels[int(rng.integers(len(pixels)))]), w)
            y = min(max(cy - p // 2, 0), h - p)
            x = min(max(cx - p // 2, 0), w - p)
        else:
            y = int(rng.integers(h - p + 1))
            x = int(rng.integers(w - p + 1))
        flip = int(rng.integers(4)) if self.flips else 0
        rot = int(rng.integers(4)) if self.rotate90 else 0
        return Window(j, y, x, flip, rot)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        """Sample ``i`` of the current epoch: image float32 (C, p, p), mask int64 (p, p) (and weights)."""
        window = self.window(i)
        j = window.image_index
        weights = None if self.weights is None else self.weights[j]
        return _crop(self.images[j], self.masks[j], window, (self.patch_size, self.patch_size), weights)


class FixedWindows(Dataset):
    """A fixed validation set: the same windows of held-back images every epoch and every run.

    With an integer ``patch_size``, ``per_image`` windows are placed uniformly at
    random inside each image, once, in ``__init__``: image ``j``'s windows come
    from ``numpy.random.default_rng([seed, j])``, so they do not depend on the
    other images. Windows are never flipped or rotated. Item order is image by
    image: items ``j * per_image`` to ``(j + 1) * per_image - 1`` come from image ``j``.

    With ``patch_size=None`` each whole image is one item (``per_image`` must be
    1). Images of different sizes then cannot be stacked into one batch: use a
    DataLoader with ``batch_size=1``, or give the model the image through tiled
    inference.

    ``__getitem__`` returns image float32 (C, h, w) and mask int64 (h, w), where
    h = w = patch_size, or the image's own size for whole images, and, with ``weights`` (one float
    (H, W) map per image), the window's pixel weights float32 (h, w).

    Raises:
        UserError: ``patch_size`` not a positive integer or None, an image smaller
            than the patch, ``per_image`` not a positive integer, a negative seed,
            or no images.
        ValueError: ``per_image`` not 1 for whole images (only the Python API
            asks for whole images), or images and masks of the wrong shape or dtype.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        patch_size: int | None,
        per_image: int = 1,
        seed: int = 0,
        weights: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.images, self.masks = _as_images_and_masks(images, masks)
        self.weights = _as_weights(weights, self.masks)
        self.patch_size = patch_size
        self.per_image = require_int("per_image", per_image, 1)
        self.seed = require_int("seed", seed, 0)
        if patch_size is None:
            if self.per_image != 1:
                raise ValueError(
                    f"per_image={per_image} with patch_size=None; whole images are taken once "
                    "each, set per_image=1 or give a patch_size"
                )
            self.windows = [Window(j, 0, 0, 0, 0) for j in range(len(self.images))]
            return
        _check_patch_fits(self.images, patch_size)
        self.windows = []
        for j, mask in enumerate(self.masks):
            rng = np.random.default_rng([self.seed, j])
            h, w = mask.shape
            ys = rng.integers(h - patch_size + 1, size=self.per_image)
            xs = rng.integers(w - patch_size + 1, size=self.per_image)
            self.windows += [Window(j, int(y), int(x), 0, 0) for y, x in zip(ys, xs)]

    def __len__(self) -> int:
        return len(self.windows)

    def window(self, i: int) -> Window:
        """The window of item ``i``."""
        return self.windows[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        window = self.windows[i]
        mask = self.masks[window.image_index]
        size = mask.shape if self.patch_size is None else (self.patch_size, self.patch_size)
        weights = None if self.weights is None else self.weights[window.image_index]
        return _crop(self.images[window.image_index], mask, window, size, weights)
