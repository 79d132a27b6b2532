"""Datasets as decoded uint8 arrays, cached once per source.

Sources are ImageFolder trees (`root/<split>/<class>/*.jpg|png`), either a directory or an
archive (.tar, .tar.gz, .tgz, .zip) holding one, possibly under a top folder such as
`cifar10/`. Decoding 60,000 JPEGs takes about a minute on two cores, so each split is decoded
once into `<cache>/datasets/<name>/<split>.npy` and reused while the source is unchanged.

Splits are decoded straight into that file and read back memory-mapped: a split at 224x224
is 150 KB an image (10,000 images: 1.5 GB), so neither decoding nor evaluation holds a whole
split in memory; the pages a batch reads are the page cache's to keep or drop.

This module does not import torch: the ONNX runtime path (`vitdeploy bench --data`) uses it.

Over 500 lines: decoding, the cache and preprocessing share the ImageSet record and the cache's
format. The next split: preprocessing into its own module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitdeploy.core.errors import UserError
from vitdeploy.core.progress import progress_bar
from vitdeploy.core.storage import atomic_path, check_writable, storage_faults
from vitdeploy.recipe.schema import DataSpec, Preprocess
from vitdeploy.runtime.imaging import IMAGE_SUFFIXES, RESAMPLE, ImageError, decode, normalize, scale_size

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@dataclass(frozen=True)
class ImageSet:
    """One decoded split: uint8 images (N, H, W, 3) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int | None, seed: int = 0) -> ImageSet:
        """A class-balanced-in-expectation random subset, stable for a given seed."""
        if count is None or count >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:count])
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def hold_out(self, count: int, seed: int) -> tuple[ImageSet, ImageSet]:
        """(the rest, `count` images set aside): a seeded random choice, disjoint, in order."""
        chosen = self.held_out_mask(count, seed)
        return self.where(~chosen), self.where(chosen)

    def held_out_mask(self, count: int, seed: int, split: str = "train") -> np.ndarray:
        """Which images `hold_out` sets aside (reading only the labels: the images may be on disk)."""
        if count >= len(self):
            raise UserError(f"data.holdout ({count}) must leave images in the {split} split: it has {len(self)}")
        chosen = np.zeros(len(self), dtype=bool)
        chosen[np.random.default_rng(seed).permutation(len(self))[:count]] = True
        return chosen

    def where(self, mask: np.ndarray) -> ImageSet:
        """The images where `mask` is true, copied into memory."""
        return ImageSet(self.images[mask], self.labels[mask], self.classes)


def default_cache_dir() -> Path:
    env = os.environ.get("VITDEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vitdeploy"


# ---------------------------------------------------------------- reading sources


def source_fingerprint(source: Path) -> str:
    """Content hash of an archive; listing hash (path, size, mtime) of a folder."""
    h = hashlib.sha256()
    if source.is_file():
        with source.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for p in sorted(source.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _safe_member(source: Path, name: str) -> str:
    """An archive member's name, refused if it would land outside an extraction folder."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UserError(f"{source}: member {name!r} points outside the archive's folder; refused")
    return name


def _iter_members(source: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (relative path, file bytes) of every image in a folder or archive."""
    try:
        if source.is_dir():
            for p in sorted(source.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    yield p.relative_to(source).as_posix(), p.read_bytes()
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as zf:
                for name in sorted(zf.namelist()):
                    if _safe_member(source, name).lower().endswith(IMAGE_SUFFIXES):
                        yield name, zf.read(name)
        elif tarfile.is_tarfile(source):
            with tarfile.open(source) as tf:
                for m in tf:
                    if _safe_member(source, m.name) and m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                        f = tf.extractfile(m)
                        if f is not None:
                            yield m.name, f.read()
        else:
            raise UserError(f"{source}: not a folder, .zip or .tar(.gz) archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise UserError(f"{source}: truncated or corrupt archive ({type(err).__name__}: {err})") from None
    except OSError as err:
        raise UserError(f"{source}: could not be read ({err})") from None


Allocate = Callable[[str, tuple[int, ...]], np.ndarray]  # (split, shape) -> the array to decode into


def in_memory(split: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


def file_backed(folder: Path) -> Allocate:
    """Decode each split into `<folder>/<split>.npy`, so memory holds no whole split."""

    def allocate(split: str, shape: tuple[int, ...]) -> np.ndarray:
        with storage_faults(folder, f"{split}.npy"):
            return np.lib.format.open_memmap(folder / f"{split}.npy", mode="w+", dtype=np.uint8, shape=shape)

    return allocate


HOLDOUT_SHARE, HOLDOUT_SEED = 0.2, 0  # a folder without split folders: 20 % of each class is "test"


def decode_imagefolder(
    source: Path, splits: set[str] | None = None, size: int | None = None, allocate: Allocate = in_memory
) -> dict[str, ImageSet]:
    """Decode the splits of an ImageFolder folder or archive into arrays.

    `<root>/<split>/<class>/<image>`; with `splits` None, every folder two levels above an
    image is a split. A folder of class folders alone (`<root>/<class>/<image>`) is split
    here: a fixed, seeded 20 % of each class becomes "test", the rest "train".
    """
    members = [(name, data) for name, data in _iter_members(source) if name.count("/") >= 1]
    raw = group_by_split(members, splits)
    if raw is None and members:
        raw = split_single_folder(source, members, splits)
    raw = raw or {s: [] for s in splits or ()}
    empty = [s for s, items in raw.items() if not items]
    if empty or not raw:
        raise UserError(
            f"{source}: no images for split(s) {', '.join(sorted(empty)) or '(any)'}; expected "
            "<root>/<split>/<class>/<image> (e.g. train/cat/0001.jpg) or <root>/<class>/<image>"
        )
    classes = tuple(sorted({cls for items in raw.values() for _, cls, _ in items}))
    for split, items in raw.items():
        absent = sorted(set(classes) - {cls for _, cls, _ in items})
        if absent:
            names = ", ".join(absent[:5])
            raise UserError(f"{source}: split '{split}' has no images of class(es) {names}; every class needs images")
    return decode_groups(source, raw, classes, size, allocate)


Member = tuple[str, str, bytes]  # (path in the source, class, file bytes)


def group_by_split(members: list[tuple[str, bytes]], splits: set[str] | None) -> dict[str, list[Member]] | None:
    """{split: members} from `<split>/<class>/<image>` paths; None when there are no split
    folders: none of the asked ones, or (nothing asked) no `train/`."""
    raw: dict[str, list[Member]] = {}
    for name, data in members:
        parts = name.split("/")
        if len(parts) >= 3 and (splits is None or parts[-3] in splits):
            raw.setdefault(parts[-3], []).append((name, parts[-2], data))
    if (splits is not None and not raw) or (splits is None and "train" not in raw):
        return None
    return raw | {s: raw.get(s, []) for s in splits or ()}


def split_single_folder(source: Path, members: list[tuple[str, bytes]], splits: set[str] | None) -> dict[str, list[Member]]:
    """Train/test from one folder of class folders: per class, a seeded 20 % is "test"."""
    roots = {tuple(name.split("/")[:-2]) for name, _ in members}
    if len(roots) != 1 or not (splits or set()) <= {"train", "test"}:
        wanted = ", ".join(sorted(splits or ()))
        raise UserError(
            f"{source}: no split folder(s) {wanted}; expected <root>/<split>/<class>/<image> "
            "(e.g. train/cat/0001.jpg), or one folder of class folders to be split 80/20 into train and test"
        )
    by_class: dict[str, list[Member]] = {}
    for name, data in members:
        by_class.setdefault(name.split("/")[-2], []).append((name, name.split("/")[-2], data))
    raw: dict[str, list[Member]] = {"train": [], "test": []}
    rng = np.random.default_rng(HOLDOUT_SEED)
    for cls in sorted(by_class):
        items = by_class[cls]
        if len(items) < 2:
            raise UserError(f"{source}: class '{cls}' has {len(items)} image; splitting needs at least 2 per class")
        held = set(rng.permutation(len(items))[: max(1, round(HOLDOUT_SHARE * len(items)))].tolist())
        for i, item in enumerate(items):
            raw["test" if i in held else "train"].append(item)
    return raw


def decode_groups(
    source: Path, raw: dict[str, list[Member]], classes: tuple[str, ...], size: int | None, allocate: Allocate = in_memory
) -> dict[str, ImageSet]:
    """Decode every split into the array `allocate` gives it (sized by the first image);
    all undecodable files are named at once, not just the first."""
    index = {c: i for i, c in enumerate(classes)}
    failed: list[str] = []
    out: dict[str, ImageSet] = {}
    with progress_bar() as bar:
        task = bar.add_task(f"decoding {source.name}", total=sum(len(v) for v in raw.values()))
        for split, items in raw.items():
            images: np.ndarray | None = None
            for i, (member, _, data) in enumerate(items):
                bar.advance(task)
                try:
                    image = decode(data, size)
                except ImageError as err:
                    failed.append(f"{member}: {err}")
                    continue
                if images is None:
                    images, first = allocate(split, (len(items), *image.shape)), member
                elif image.shape != images.shape[1:]:
                    raise UserError(
                        f"{source}: images of different sizes ({first}: {images.shape[2]}x{images.shape[1]}, "
                        f"{member}: {image.shape[1]}x{image.shape[0]}); give a size "
                        "(data.image_size in a recipe; a build decodes to the model's input size)"
                    )
                images[i] = image
            if not failed and images is not None:
                labels = np.array([index[cls] for _, cls, _ in items], dtype=np.int64)
                out[split] = ImageSet(images, labels, classes)
    if failed:
        shown = "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
        raise UserError(f"{source}: {len(failed)} file(s) could not be decoded as images: {shown}; remove or replace them")
    return out


def decode_cifar10_binary(archive: Path) -> dict[str, ImageSet]:
    """The canonical binary release: records of 1 label byte + 3072 CHW pixel bytes."""
    batches: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    with tarfile.open(archive) as tf:
        for m in tf:
            base = Path(m.name).name
            split = "test" if base == "test_batch.bin" else "train" if base.startswith("data_batch") else None
            f = tf.extractfile(m) if split else None
            if f is not None and split is not None:
                batches[split].append(np.frombuffer(f.read(), dtype=np.uint8).reshape(-1, 3073))
    out = {}
    for split, parts in batches.items():
        rec = np.concatenate(parts)
        images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        out[split] = ImageSet(images, rec[:, 0].astype(np.int64), CIFAR10_CLASSES)
    return out


# ---------------------------------------------------------------- the cache


CACHE_FORMAT = 2  # 2: <split>.npy memory-mapped + <split>.labels.npy; 1: <split>.npz read whole


class DataStore:
    """Decoded datasets under `<root>/datasets/<name>/`, with a meta.json of their source."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_cache_dir()) / "datasets"

    def folder(self, name: str) -> Path:
        return self.root / name

    def meta(self, name: str) -> dict | None:
        path = self.folder(name) / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def import_source(self, name: str, source: Path, splits: set[str] | None = None, size: int | None = None) -> dict:
        """Decode `source` into the cache (skipped when that exact source is already there)."""
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
        fingerprint = source_fingerprint(source)
        meta = self.meta(name)
        if meta and meta["fingerprint"] == fingerprint and meta.get("size") == size and meta.get("format") == CACHE_FORMAT:
            if splits is None or splits <= set(meta["splits"]):
                return meta
            splits = splits | set(meta["splits"])  # a split not decoded yet: decoded beside those that are
        folder = self.folder(name)
        check_writable(folder)  # before decoding: a read-only cache fails at once
        created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
        try:
            with storage_faults(folder):
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".decoding-", dir=folder) as staging:
                if _is_cifar_binary(source):
                    sets = decode_cifar10_binary(source)
                else:
                    sets = decode_imagefolder(source, splits, size, allocate=file_backed(Path(staging)))
                return self._write(name, sets, str(source.resolve()), fingerprint, size)
        except BaseException:
            if created is not None:  # a refused source leaves no cache folders behind
                shutil.rmtree(created, ignore_errors=True)
            raise

    def _write(self, name: str, sets: dict[str, ImageSet], source: str, fingerprint: str, size: int | None) -> dict:
        """Each split's files renamed (or written) into place, then meta.json, which makes them count."""
        folder = self.folder(name)
        (folder / "meta.json").unlink(missing_ok=True)  # a crash part-way leaves no meta: re-decoded next time
        for split, s in sets.items():
            with storage_faults(folder, f"{split}.npy"):
                for array, target in ((s.images, folder / f"{split}.npy"), (s.labels, folder / f"{split}.labels.npy")):
                    if isinstance(array, np.memmap) and Path(array.filename).parent != folder:
                        array.flush()
                        os.replace(array.filename, target)
                    else:
                        with atomic_path(target) as tmp, tmp.open("wb") as f:
                            np.save(f, array)
            (folder / f"{split}.npz").unlink(missing_ok=True)  # the earlier format's file
        first = next(iter(sets.values()))
        meta = {
            "name": name,
            "source": source,
            "fingerprint": fingerprint,
            "size": size,
            "format": CACHE_FORMAT,
            "splits": {k: len(v) for k, v in sets.items()},
            "classes": list(first.classes),
            "image_shape": list(first.images.shape[1:]),
        }
        with atomic_path(folder / "meta.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
        return meta

    def load(self, name: str, split: str) -> ImageSet:
        """A split, its images memory-mapped (read-only): slices are read from disk when used."""
        meta = self.meta(name)
        if meta is None:
            where = "" if self.root.parent == default_cache_dir() else f" --cache-dir {self.root.parent}"
            raise UserError(
                f"dataset '{name}' is not in the cache {self.root}; run "
                f"`vitdeploy data get {name} --from PATH{where}` (or give data.source in the recipe)"
            )
        if split not in meta["splits"]:
            raise UserError(f"dataset '{name}' has no split '{split}'; it has {sorted(meta['splits'])}")
        folder = self.folder(name)
        if meta.get("format") != CACHE_FORMAT:  # decoded by an earlier version: read whole
            with np.load(folder / f"{split}.npz") as z:
                return ImageSet(z["images"], z["labels"], tuple(str(c) for c in z["classes"]))
        images = np.load(folder / f"{split}.npy", mmap_mode="r")
        return ImageSet(images, np.load(folder / f"{split}.labels.npy"), tuple(meta["classes"]))

    def download_cifar10(self) -> dict:
        """Fetch the canonical binary CIFAR-10 release (needs internet)."""
        target = self.root / "_downloads" / Path(CIFAR10_URL).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file():
            try:
                with urllib.request.urlopen(CIFAR10_URL, timeout=30) as r, atomic_path(target) as tmp:
                    tmp.write_bytes(r.read())
            except OSError as err:
                raise UserError(
                    f"could not download {CIFAR10_URL} ({err}); without internet, import a local "
                    "copy: vitdeploy data get cifar10 --from PATH"
                ) from None
        return self.import_source("cifar10", target)


def _is_cifar_binary(source: Path) -> bool:
    if not (source.is_file() and tarfile.is_tarfile(source)):
        return False
    with tarfile.open(source) as tf:
        first = next((m.name for m in tf if m.isfile()), "")
    return first.endswith(".bin") or "cifar-10-batches-bin" in first


def dataset_name(spec: DataSpec) -> str:
    """Cache name: the dataset name, plus a source hash for ad-hoc ImageFolder sources."""
    if spec.source is None or spec.dataset == "cifar10":
        return spec.dataset
    return f"{spec.dataset}-{hashlib.sha256(str(spec.source).encode()).hexdigest()[:8]}"


VALIDATION = "validation"  # the split `DataSpec.holdout` sets aside (from the train split by default)
HOLDOUT_SPLIT_SEED = 7


def load_split(spec: DataSpec, split: str, size: int | None = None) -> ImageSet:
    """The split a recipe asks for, decoding its source into the cache first if needed.

    With `spec.holdout`, the split the held-out images come from (`spec.holdout_source`: the
    train split unless said otherwise) is what remains after them, and they are the split
    `validation`."""
    store = DataStore(spec.cache_dir)
    name = dataset_name(spec)
    source = spec.holdout_source
    if spec.source is not None:
        wanted = {spec.train_split, spec.eval_split, source} - {VALIDATION}
        store.import_source(name, spec.source, wanted, size)
    if spec.holdout and split in (source, VALIDATION):
        whole = store.load(name, source)
        held = whole.held_out_mask(spec.holdout, seed=HOLDOUT_SPLIT_SEED, split=source)
        return whole.where(held if split == VALIDATION else ~held)  # only the side asked for is read
    return store.load(name, split)


# ---------------------------------------------------------------- preprocessing


def preprocess(images: np.ndarray, spec: Preprocess, size: int | None = None) -> np.ndarray:
    """uint8 NHWC -> normalized float32 NCHW at `size`: resized to `scale_size(size, crop_pct)`
    unless already that size, then centre-cropped to `size` (as `predict` reads a file).

    The one preprocessing used to evaluate both PyTorch and ONNX models, so they see the
    same tensors; its parameters are written to the manifest.
    """
    if size is not None:
        images = fit(images, size, spec)
    return normalize(images, np.asarray(spec.mean), np.asarray(spec.std))


def fit(images: np.ndarray, size: int, spec: Preprocess) -> np.ndarray:
    """Square uint8 NHWC images at `size`: resized to the crop's scale size if they differ from
    it, then the central size x size (a no-op for images at the model size with crop_pct 1)."""
    side = scale_size(size, spec.crop_pct)
    if images.shape[1:3] != (side, side):
        resample = RESAMPLE[spec.interpolation]
        images = np.stack([np.asarray(Image.fromarray(im).resize((side, side), resample)) for im in images])
    if side == size:
        return images
    top = (side - size) // 2
    return np.ascontiguousarray(images[:, top : top + size, top : top + size])


@dataclass(frozen=True)
class PreprocessedImages:
    """Decoded images that are preprocessed slice by slice, when a slice is asked for.

    Calibration, SmoothQuant and bias correction read their images in batches; holding them
    preprocessed at once costs float32 at the model size: 512 images at 224x224 are 308 MB,
    against 77 MB as the uint8 they are decoded to (and 1.6 MB as CIFAR-10's 32x32 originals).
    """

    images: np.ndarray  # uint8 NHWC
    pre: Preprocess
    size: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> np.ndarray:
        return preprocess(self.images[index], self.pre, self.size)


ImageBatches = np.ndarray | PreprocessedImages  # what calibration reads: preprocessed NCHW batches when sliced


def batches(images: ImageSet, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(images), batch_size):
        yield images.images[start : start + batch_size], images.labels[start : start + batch_size]


def data_identity(spec: DataSpec) -> dict:
    """What a trained model depends on in the data: which images it learns from (by content) and
    how they are fed. Not the split it is scored on: training only reports a top-1 there, so a
    student trained for `tune` (scored on held-out images) serves the tuned recipe's build too."""
    if spec.source is not None:
        fingerprint = source_fingerprint(spec.source)
    else:
        meta = DataStore(spec.cache_dir).meta(dataset_name(spec)) or {}
        fingerprint = meta.get("fingerprint", "absent")
    trains_on_fewer = spec.holdout and spec.holdout_source == spec.train_split
    return {
        "dataset": dataset_name(spec),
        "fingerprint": fingerprint,
        "train_split": spec.train_split,
        **({"holdout": spec.holdout} if trains_on_fewer else {}),
        "preprocess": json.loads(spec.preprocess.cache_json()),
        **({"image_size": spec.image_size} if spec.image_size else {}),
    }
