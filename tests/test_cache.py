"""The decode cache: entries keyed by path, size and mtime; hits skip the decoder, in load_pairs,
training on full images and patch folders; no cache when it is off or cannot be written."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import unet_patches.atomic as atomic
import unet_patches.data.cache as cache_module
import unet_patches.data.imageio as imageio_module
from unet_patches.data.cache import CACHE_DIR_NAME, DecodeCache
from unet_patches.data.folders import load_pairs
from unet_patches.data.imageio import read_raw, write_png
from unet_patches.data.patches import extract_patches
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.training.datasets import make_datasets, make_loader, set_epoch

from helpers import small_dataset, tiny_config


class Counter:
    """Wraps a decoder and counts the files it opens."""

    def __init__(self, function) -> None:
        self.function = function
        self.paths: list = []

    def __call__(self, path, *args, **kwargs):
        self.paths.append(path)
        return self.function(path, *args, **kwargs)

    @property
    def calls(self) -> int:
        return len(self.paths)


@pytest.fixture
def decoders(monkeypatch):
    """Count calls of the decoder behind the cache and of the module-level one (read_image, ...)."""
    counters = {"cache": Counter(cache_module.read_raw), "imageio": Counter(imageio_module.read_raw)}
    monkeypatch.setattr(cache_module, "read_raw", counters["cache"])
    monkeypatch.setattr(imageio_module, "read_raw", counters["imageio"])
    return counters


def _entries(folder) -> list[str]:
    directory = folder / CACHE_DIR_NAME
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _image(tmp_path, value: int = 7, shape=(6, 9)):
    path = tmp_path / "data" / "a.png"
    write_png(path, (np.arange(np.prod(shape)).reshape(shape) * value % 256).astype(np.uint8))
    return path


# ------------------------------------------------------------------------------------ DecodeCache


def test_second_read_is_a_memory_mapped_hit(tmp_path, decoders, monkeypatch):
    monkeypatch.setattr(cache_module, "MAP_ABOVE_BYTES", 0)  # map even this small file
    path = _image(tmp_path)
    cache = DecodeCache(tmp_path / "data")
    first = cache.read(path)
    assert (cache.hits, cache.misses, decoders["cache"].calls) == (0, 1, 1)
    assert not isinstance(first, np.memmap)
    second = cache.read(path)
    assert (cache.hits, cache.misses, decoders["cache"].calls) == (1, 1, 1)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    assert second.dtype == first.dtype and np.array_equal(second, first)
    # A fresh cache over the same folder (a later run) hits too.
    third = DecodeCache(tmp_path / "data")
    assert np.array_equal(third.read(path), first) and third.hits == 1 and decoders["cache"].calls == 1
    (entry,) = _entries(tmp_path / "data")
    stat = path.stat()
    stamp = f"-{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ctime_ns}-{stat.st_ino}.c1.npy"
    assert entry.endswith(stamp)


def test_mask_and_page_reads_have_their_own_entries(tmp_path, decoders):
    path = _image(tmp_path)
    cache = DecodeCache(tmp_path / "data")
    cache.read(path)
    cache.read(path, mask=True)
    cache.read(path, page=0)
    assert cache.misses == 3 and len(_entries(tmp_path / "data")) == 3
    for options in ({}, {"mask": True}, {"page": 0}):
        assert np.array_equal(cache.read(path, **options), read_raw(path))
    assert cache.hits == 3


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_a_miss(tmp_path):
    # Two masks swapped by renaming (as after unpacking an archive again): same sizes and mtimes.
    a, b = tmp_path / "data" / "a.png", tmp_path / "data" / "b.png"
    write_png(a, np.full((6, 9), 1, dtype=np.uint8))
    write_png(b, np.full((6, 9), 2, dtype=np.uint8))
    os.utime(b, ns=(a.stat().st_mtime_ns, a.stat().st_mtime_ns))
    assert a.stat().st_size == b.stat().st_size
    cache = DecodeCache(tmp_path / "data")
    assert cache.read(a)[0, 0] == 1
    a.rename(tmp_path / "data" / "tmp.png")
    b.rename(a)
    (tmp_path / "data" / "tmp.png").rename(b)
    assert cache.read(a)[0, 0] == 2 and cache.read(b)[0, 0] == 1


def test_changed_file_is_a_miss_and_replaces_its_entry(tmp_path, decoders):
    path = _image(tmp_path, value=7)
    cache = DecodeCache(tmp_path / "data")
    cache.read(path)
    (old,) = _entries(tmp_path / "data")
    before = path.stat().st_mtime_ns
    write_png(path, np.full((6, 9), 200, dtype=np.uint8))
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))
    got = cache.read(path)
    assert (cache.hits, cache.misses) == (0, 2)
    assert np.array_equal(got, np.full((6, 9), 200, dtype=np.uint8))
    (new,) = _entries(tmp_path / "data")
    assert new != old and f"-{before + 5_000_000_000}-" in new
    # Only the time changed: still a new entry, read from the file.
    os.utime(path, ns=(before + 9_000_000_000, before + 9_000_000_000))
    assert np.array_equal(cache.read(path), got) and cache.misses == 3 and len(_entries(tmp_path / "data")) == 1


def test_no_folder_means_no_cache(tmp_path, decoders):
    path = _image(tmp_path)
    cache = DecodeCache(None)
    for _ in range(2):
        assert np.array_equal(cache.read(path), read_raw(path))
    assert decoders["cache"].calls == 2 and (cache.hits, cache.misses) == (0, 0)
    assert not (tmp_path / "data" / CACHE_DIR_NAME).exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png"]


def test_missing_file_keeps_its_message(tmp_path):
    with pytest.raises(UserError, match="nope.png: file not found"):
        DecodeCache(tmp_path).read(tmp_path / "nope.png")
    assert not (tmp_path / CACHE_DIR_NAME).exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_reads_without_cache(tmp_path):
    path = _image(tmp_path)
    folder = tmp_path / "data"
    folder.chmod(0o555)
    try:
        cache = DecodeCache(folder)
        for _ in range(2):
            assert np.array_equal(cache.read(path), read_raw(path))
        assert not (folder / CACHE_DIR_NAME).exists()
    finally:
        folder.chmod(0o755)


def test_unwritable_cache_reads_without_it(tmp_path, monkeypatch, caplog, decoders):
    # What a read-only folder does, also when the tests run as root (who may write anywhere).
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    path = _image(tmp_path)
    cache = DecodeCache(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="unet_patches.data.cache"):
        for _ in range(3):
            assert np.array_equal(cache.read(path), read_raw(path))
    assert cache.directory is None and decoders["cache"].calls == 3
    assert len([r for r in caplog.records if "cannot write the decode cache" in r.getMessage()]) == 1
    assert _entries(tmp_path / "data") == []


# ------------------------------------------------------------------------------------ load_pairs


def test_load_pairs_twice_decodes_once(tmp_path, decoders):
    root = small_dataset(tmp_path / "set", n_train=3, n_test=0)
    folder = root / "train"
    first = load_pairs(folder, Preprocess())
    assert decoders["cache"].calls == 6  # 3 images and 3 masks
    second = load_pairs(folder, Preprocess())
    assert decoders["cache"].calls == 6 and decoders["imageio"].calls == 0
    for a, b in zip(first, second):
        assert a.name == b.name and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert len(_entries(folder)) == 6


def test_load_pairs_without_cache_writes_nothing(tmp_path, decoders):
    root = small_dataset(tmp_path / "set", n_train=2, n_test=0)
    for _ in range(2):
        load_pairs(root / "train", Preprocess(), cache=False)
    assert decoders["cache"].calls == 8
    assert not list(tmp_path.rglob(CACHE_DIR_NAME))


# ------------------------------------------------------------------------------------ training


def _two_epochs(dataset, batch_size: int = 4) -> list[np.ndarray]:
    loader = make_loader(dataset, batch_size, train=True, seed=0, num_workers=0)
    batches = []
    for epoch in range(2):
        set_epoch(loader, epoch)
        batches.extend(images.numpy() for images, _ in loader)
    return batches


def test_training_on_images_decodes_nothing_once_cached(tmp_path, decoders):
    root = small_dataset(tmp_path / "set", n_train=4, n_test=0)
    config = tiny_config(tmp_path, str(root / "train"))
    first = _two_epochs(make_datasets(config).train)
    assert decoders["cache"].calls == 8  # filled by the first run
    decoders["cache"].paths.clear()
    sources = make_datasets(config)
    second = _two_epochs(sources.train)
    if sources.val is not None:
        list(sources.val)
    assert decoders["cache"].calls == 0 and decoders["imageio"].calls == 0
    assert len(second) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_training_on_images_without_cache_decodes_every_run(tmp_path, decoders):
    root = small_dataset(tmp_path / "set", n_train=3, n_test=0)
    files = {p for p in (root / "train").rglob("*.png")}
    config = tiny_config(tmp_path, str(root / "train")).merged({"data": {"cache": False}})
    for _ in range(2):
        decoders["cache"].paths.clear()
        _two_epochs(make_datasets(config).train)
        assert set(decoders["cache"].paths) == files  # every image and mask decoded again
    assert not list(tmp_path.rglob(CACHE_DIR_NAME))


def test_patch_folder_second_pass_opens_no_png(tmp_path, decoders):
    root = small_dataset(tmp_path / "set", n_train=3, n_test=0)
    folder = tmp_path / "patches"
    extract_patches(root / "train", folder, patch_size=32, per_image=2, preprocess=Preprocess())
    config = tiny_config(tmp_path, str(folder), val_fraction=0.34)
    sources = make_datasets(config)
    assert sources.kind == "patches" and len(sources.train) > 0 and sources.val is not None
    first = [(image.numpy(), mask.numpy()) for image, mask in sources.train]
    assert decoders["cache"].calls > 0  # the patches were decoded (by inspection or this first pass)
    assert all(path.parent.parent in (folder, root / "train") for path in decoders["cache"].paths)
    decoders["cache"].paths.clear()
    second = [(image.numpy(), mask.numpy()) for image, mask in sources.train]
    _two_epochs(sources.train)
    assert decoders["cache"].calls == 0 and decoders["imageio"].calls == 0
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    # A new run over the same patch folder hits the entries the first one wrote.
    again = make_datasets(config)
    list(again.train)
    assert decoders["cache"].calls == 0 and again.train.reader.hits == len(again.train) * 2


def test_a_small_file_is_read_whole_from_the_cache(tmp_path):
    path = _image(tmp_path)  # far below MAP_ABOVE_BYTES: mapping would cost more than reading
    cache = DecodeCache(tmp_path / "data")
    first, second = cache.read(path), cache.read(path)
    assert cache.hits == 1 and not isinstance(second, np.memmap) and np.array_equal(first, second)


def test_a_file_name_that_is_not_utf8_is_cached(tmp_path):
    import sys

    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / os.fsdecode(b"bad\xff.png")
    write_png(path, np.full((3, 4), 9, dtype=np.uint8))
    cache = DecodeCache(folder)
    assert cache.read(path)[0, 0] == 9 and cache.read(path)[0, 0] == 9
    assert (cache.hits, cache.misses) == (1, 1)


# ------------------------------------------------------------------------------------ damaged entries


def _damage(entry, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "cut short":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "a byte altered":
        data[-20] ^= 0x01  # a pixel near the end: the .npy itself still loads
        entry.write_bytes(bytes(data))
    else:  # the shape in the header changed, the length kept (np.load alone would return it)
        entry.write_bytes(bytes(data).replace(b"(6, 9)", b"(9, 6)", 1))


@pytest.mark.parametrize("how", ["cut short", "a byte altered", "another shape"])
@pytest.mark.parametrize("mapped", [False, True])
def test_a_damaged_entry_is_decoded_again_and_replaced_never_used(tmp_path, decoders, monkeypatch, caplog, how, mapped):
    if mapped:
        monkeypatch.setattr(cache_module, "MAP_ABOVE_BYTES", 0)
    path = _image(tmp_path)
    expected = read_raw(path)
    cache = DecodeCache(tmp_path / "data")
    cache.read(path)
    (name,) = _entries(tmp_path / "data")
    entry = tmp_path / "data" / CACHE_DIR_NAME / name
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="unet_patches.data.cache"):
        again = DecodeCache(tmp_path / "data").read(path)
    assert np.array_equal(again, expected) and again.shape == (6, 9)
    assert decoders["cache"].calls == 2 and f"{name}: cache entry damaged" in caplog.text
    assert _entries(tmp_path / "data") == [name]  # rebuilt under its name
    third = DecodeCache(tmp_path / "data")
    assert np.array_equal(third.read(path), expected) and third.hits == 1


def test_an_entry_of_the_layout_before_checksums_is_a_miss_and_replaced(tmp_path, decoders):
    path = _image(tmp_path)
    cache = DecodeCache(tmp_path / "data")
    cache.read(path)
    (name,) = _entries(tmp_path / "data")
    old = tmp_path / "data" / CACHE_DIR_NAME / name.replace(".c1.npy", ".npy")
    np.save(old, np.zeros((6, 9), np.uint8))
    (tmp_path / "data" / CACHE_DIR_NAME / name).unlink()
    assert np.array_equal(DecodeCache(tmp_path / "data").read(path), read_raw(path))
    assert _entries(tmp_path / "data") == [name]
