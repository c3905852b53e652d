"""Class pixel counts and the weights that balance rare classes (median frequency balancing).

The original system computed median-frequency weights (about [0.09, 1.98, 1.0] on its synthetic
data) but never used them; here ``training.class_weights = "median_frequency"`` feeds them to the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unet_patches.validate import require_int

__all__ = ["check_mask_values", "class_pixel_counts", "median_frequency_weights"]


def check_mask_values(masks: Sequence[np.ndarray], num_classes: int, ignore_index: int | None) -> None:
    """Raise `ValueError` naming the first mask holding a value outside [0, num_classes)."""
    for j, mask in enumerate(masks):
        values = np.unique(mask)
        bad = values[(values < 0) | (values >= num_classes)]
        if ignore_index is not None:
            bad = bad[bad != ignore_index]
        if bad.size:
            raise ValueError(
                f"mask {j} holds class value {int(bad[0])}; expected values 0..{num_classes - 1}"
                + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
                + ", raise num_classes or fix the mask"
            )


def class_pixel_counts(
    masks: Sequence[np.ndarray], num_classes: int, *, per_image: bool = False, ignore_index: int | None = None
) -> np.ndarray:
    """Count the pixels of each class.

    Args:
        masks: integer arrays (H, W) of class indices.
        num_classes: K.
        per_image: return one row per mask instead of the total.
        ignore_index: a mask value that is allowed although >= K and is not counted.

    Returns:
        int64 array (K,), or (N, K) with ``per_image`` for N masks.

    Raises:
        UserError: ``num_classes`` not an integer >= 1.
        ValueError: a mask that is not an integer 2-D array, or holds a value
            outside [0, K) other than ``ignore_index``.
    """
    num_classes = require_int("num_classes", num_classes, 1)
    rows = []
    for j, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"mask {j} has shape {mask.shape} and dtype {mask.dtype}; expected an integer "
                "(H, W) array of class indices, read it with imageio"
            )
        check_mask_values([mask], num_classes, ignore_index)
        flat = mask.ravel()
        if ignore_index is not None:
            flat = flat[flat != ignore_index]
        rows.append(np.bincount(flat, minlength=num_classes)[:num_classes].astype(np.int64))
    counts = np.stack(rows) if rows else np.zeros((0, num_classes), dtype=np.int64)
    return counts if per_image else counts.sum(axis=0, dtype=np.int64)


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus, 2015): weight_c = median(freq) / freq_c.

    freq_c is the pixels of class c divided by the total pixels of the images
    that contain class c. That needs per-image counts, shape (N, K), from
    ``class_pixel_counts(masks, K, per_image=True)``. Given totals of shape (K,),
    the whole set is treated as one image and the weights reduce to
    median(counts) / counts_c.

    Classes that never occur get weight 0 and are left out of the median, so a
    class missing from the training set neither gets an infinite weight nor
    shifts the others. The median of an even number of classes is the mean of
    the two middle ones. The most common class gets the smallest weight and the
    class of median frequency gets exactly 1.

    Args:
        counts: non-negative pixel counts, shape (K,) or (N, K).

    Returns:
        float32 array (K,).

    Raises:
        ValueError: counts of another shape, negative, or all zero (counts come
            from `class_pixel_counts` or the manifest `patches.extract_patches`
            writes, never straight from the user).
    """
    counts = np.asarray(counts)
    if counts.ndim == 1:
        counts = counts[None, :]
    if counts.ndim != 2 or counts.shape[1] == 0:
        raise ValueError(f"counts has shape {counts.shape}; expected (K,) or (N, K) from class_pixel_counts")
    if (counts < 0).any():
        raise ValueError("counts holds negative values; expected pixel counts from class_pixel_counts")
    counts = counts.astype(np.float64)
    class_pixels = counts.sum(axis=0)
    present = class_pixels > 0
    if not present.any():
        raise ValueError("counts is all zero; expected masks with at least one labelled pixel")
    image_pixels = counts.sum(axis=1)
    # Pixels of the images in which each class occurs at least once.
    pixels_of_images_with = (counts > 0).astype(np.float64).T @ image_pixels
    freq = np.zeros_like(class_pixels)
    freq[present] = class_pixels[present] / pixels_of_images_with[present]
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights.astype(np.float32)
