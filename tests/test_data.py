"""Datasets: the shared CIFAR-10 archive, ImageFolder trees, the decode cache, preprocessing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import CIFAR10_CLASSES, DataStore, load_split, preprocess
from vitdeploy.recipe.schema import DataSpec, Preprocess

from .conftest import CIFAR_ARCHIVE


def test_cifar10_archive_decodes_to_the_documented_splits(cifar10: Path) -> None:
    store = DataStore(cifar10)
    meta = store.meta("cifar10")
    assert meta["splits"] == {"train": 50000, "test": 10000}
    assert tuple(meta["classes"]) == CIFAR10_CLASSES
    test = store.load("cifar10", "test")
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert 80 < test.images.mean() < 160  # real photographs, not blank arrays


def test_second_import_reuses_the_cache(cifar10: Path) -> None:
    store = DataStore(cifar10)
    npy = store.folder("cifar10") / "train.npy"
    before = npy.stat().st_mtime_ns
    start = time.perf_counter()
    store.import_source("cifar10", CIFAR_ARCHIVE)
    assert npy.stat().st_mtime_ns == before
    assert time.perf_counter() - start < 5  # hashing 19 MB, no decoding


def make_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls, colour in (("red", 0), ("blue", 2)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 40, (20, 24, 3), dtype=np.uint8)
                arr[..., colour] = 250
                Image.fromarray(arr).save(folder / f"{i}.png")


def test_imagefolder_folder_with_resize(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "flowers")
    spec = DataSpec(dataset="flowers", source=tmp_path / "flowers", eval_split="val", cache_dir=tmp_path / "c")
    train = load_split(spec, "train", size=16)
    assert train.classes == ("blue", "red")
    assert train.images.shape == (6, 16, 16, 3)
    red = train.images[train.labels == 1]
    assert (red[..., 0].mean() > 200) and (red[..., 2].mean() < 60)
    assert len(load_split(spec, "val", size=16)) == 4


def test_imagefolder_without_expected_split_is_a_user_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "f")
    with pytest.raises(UserError, match="no images for split"):
        DataStore(tmp_path / "c").import_source("f", tmp_path / "f", {"train", "test"}, size=16)


def test_uncached_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="vitdeploy data get cifar100 --from PATH"):
        DataStore(tmp_path).load("cifar100", "train")


def test_preprocess_normalizes_and_transposes() -> None:
    images = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    x = preprocess(images, pre)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [2.0, 1.0, 0.5])
    assert preprocess(images, pre, size=8).shape == (2, 3, 8, 8)


def test_data_get_cli_imports_and_reports_bad_paths(tmp_path: Path) -> None:
    import subprocess
    import sys

    make_imagefolder(tmp_path / "shapes")
    cmd = [sys.executable, "-m", "vitdeploy.cli", "data", "get"]
    ok = subprocess.run([*cmd, "shapes", "--from", str(tmp_path / "shapes"), "--cache-dir", str(tmp_path / "c")],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "train: 6" in ok.stdout and (tmp_path / "c" / "datasets" / "shapes" / "train.npy").is_file()
    bad = subprocess.run([*cmd, "cifar10", "--from", str(tmp_path / "nope.tar.gz")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_non_image_member_is_named_not_a_traceback(tmp_path: Path) -> None:
    for split in ("train", "test"):
        folder = tmp_path / "src" / split / "cat"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "ok.png")
    (tmp_path / "src" / "train" / "cat" / "notes.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"train/cat/notes.jpg: not an image"):
        DataStore(tmp_path / "cache").import_source("odd", tmp_path / "src")


def test_missing_cache_hint_names_the_recipes_cache_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"--cache-dir {tmp_path / 'elsewhere'}"):
        load_split(DataSpec(dataset="cifar10", cache_dir=tmp_path / "elsewhere"), "train")


def make_photo_folder(root: Path, per_class: int = 5) -> None:
    """A user's folder: class folders only, images of mixed sizes, modes and formats."""
    rng = np.random.default_rng(1)
    modes = [("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("P", "png"), ("CMYK", "jpg")]
    for cls, colour in (("apple", (220, 30, 30)), ("leaf", (30, 200, 40)), ("sky", (40, 60, 230))):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            mode, ext = modes[i % len(modes)]
            w, h = (int(v) for v in rng.integers(30, 90, 2))
            Image.new("RGB", (w, h), colour).convert(mode).save(root / cls / f"{i}.{ext}")


def test_a_folder_of_class_folders_is_split_80_20_by_a_fixed_seed(tmp_path: Path) -> None:
    make_photo_folder(tmp_path / "photos")
    spec = DataSpec(dataset="photos", source=tmp_path / "photos", cache_dir=tmp_path / "c")
    train, test = load_split(spec, "train", size=24), load_split(spec, "test", size=24)
    assert train.classes == test.classes == ("apple", "leaf", "sky")
    assert (len(train), len(test)) == (12, 3)  # one of each class's five held out
    assert sorted(test.labels.tolist()) == [0, 1, 2] and train.images.shape[1:] == (24, 24, 3)
    again = DataStore(tmp_path / "other").import_source("p", tmp_path / "photos", {"train", "test"}, size=24)
    assert again["splits"] == {"train": 12, "test": 3}
    np.testing.assert_array_equal(DataStore(tmp_path / "other").load("p", "test").images, test.images)


def test_a_single_folder_cannot_serve_a_split_it_does_not_make(tmp_path: Path) -> None:
    make_photo_folder(tmp_path / "photos")
    with pytest.raises(UserError, match=r"no split folder.*one folder of class folders to be split 80/20"):
        DataStore(tmp_path / "c").import_source("p", tmp_path / "photos", {"train", "val"}, size=24)


def test_every_undecodable_file_is_named_at_once(tmp_path: Path) -> None:
    make_photo_folder(tmp_path / "photos")
    (tmp_path / "photos" / "apple" / "notes.jpg").write_text("not an image")
    (tmp_path / "photos" / "sky" / "cut.png").write_bytes((tmp_path / "photos" / "sky" / "1.png").read_bytes()[:40])
    with pytest.raises(UserError, match=r"2 file\(s\) could not be decoded.*apple/notes.jpg.*sky/cut.png"):
        DataStore(tmp_path / "c").import_source("p", tmp_path / "photos", size=24)


def test_mixed_sizes_without_a_size_say_which_setting_to_give(tmp_path: Path) -> None:
    make_photo_folder(tmp_path / "photos")
    named = r"\(\w+/\d\.\w+: \d+x\d+, \w+/\d\.\w+: \d+x\d+\)"  # two files and their sizes
    with pytest.raises(UserError, match=rf"images of different sizes {named}.*data.image_size"):
        DataStore(tmp_path / "c").import_source("p", tmp_path / "photos")
    assert not (tmp_path / "c").exists()  # nothing half-decoded, no empty cache folders


def test_a_split_is_read_from_disk_as_used_not_held_in_memory(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "f")
    spec = DataSpec(dataset="f", source=tmp_path / "f", eval_split="val", cache_dir=tmp_path / "c")
    val = load_split(spec, "val", size=16)
    assert isinstance(val.images, np.memmap) and not val.images.flags.writeable
    assert Path(val.images.filename).name == "val.npy"
    fresh = DataStore(tmp_path / "fresh").import_source("f", tmp_path / "f", {"train", "val"}, size=16)
    assert fresh["splits"] == {"train": 6, "val": 4}
    assert np.array_equal(val.images, DataStore(tmp_path / "fresh").load("f", "val").images)
    cached = Path(val.images.filename).parent  # nothing else is left there, no staging folder
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        ["meta.json", "train.npy", "train.labels.npy", "val.npy", "val.labels.npy"]
    )


def test_a_cache_written_in_the_earlier_format_is_read_then_replaced(cifar10: Path, tmp_path: Path) -> None:
    old = DataStore(cifar10).load("cifar10", "test").subset(20)
    folder = tmp_path / "datasets" / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "test.npz", images=old.images, labels=old.labels, classes=np.array(old.classes))
    meta = {"fingerprint": "x", "size": None, "splits": {"test": 20}, "classes": list(old.classes)}
    (folder / "meta.json").write_text(__import__("json").dumps(meta))
    again = DataStore(tmp_path).load("cifar10", "test")
    assert np.array_equal(again.images, old.images) and np.array_equal(again.labels, old.labels)
