"""The model's head against the dataset's classes, compared before any work starts.

A 10-class model built on a 3-class folder would train, export, quantize and package, and only
`predict` would find that its outputs cannot be named. Both counts are read cheaply: the
classes from the folder or archive member names (no image decoded) or the cache's record, the
head from the recipe's `num_classes` or the checkpoint's stored architecture (no torch).
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from vitdeploy.core.architecture import read_architecture
from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore, dataset_name
from vitdeploy.recipe.schema import DataSpec, ModelSpec
from vitdeploy.runtime.imaging import IMAGE_SUFFIXES


def _image_names(source: Path) -> Iterator[str]:
    """Relative paths of the images in a folder or archive; no file content is read."""
    if source.is_dir():
        yield from (p.relative_to(source).as_posix() for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            yield from (n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES))
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            yield from (m.name for m in tf if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES))


def dataset_classes(spec: DataSpec) -> tuple[str, ...] | None:
    """The class names a recipe's data has, or None where they cannot be known without decoding
    (a source that is neither folder nor archive, or a dataset not in the cache yet)."""
    if spec.source is not None:
        if not spec.source.exists():
            return None
        splits = {spec.train_split, spec.eval_split}
        try:
            found = {p[-2] for p in (n.split("/") for n in _image_names(spec.source)) if len(p) >= 3 and p[-3] in splits}
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError):
            return None  # decoding names the problem with its own message
        return tuple(sorted(found)) or None
    meta = DataStore(spec.cache_dir).meta(dataset_name(spec))
    return tuple(meta["classes"]) if meta else None


def head_size(spec: ModelSpec) -> int | None:
    """The model's output count as the recipe or its checkpoint declares it (None: timm's default)."""
    if spec.overrides.num_classes is not None:
        return spec.overrides.num_classes
    stored = read_architecture(spec.checkpoint) if spec.checkpoint is not None else None
    return stored.overrides.get("num_classes") if stored is not None else None


def mismatch(outputs: int, classes: tuple[str, ...], dataset: str) -> str:
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    return (
        f"the model has {outputs} outputs but dataset '{dataset}' has {len(classes)} classes ({shown}); "
        f"set model.overrides.num_classes: {len(classes)} for a model trained from scratch, or use data with the "
        f"model's {outputs} classes"
    )


def check_head_matches(model: ModelSpec, data: DataSpec) -> None:
    """UserError when the declared head and the data's classes are both known and differ."""
    outputs, classes = head_size(model), dataset_classes(data)
    if outputs is not None and classes is not None and outputs != len(classes):
        raise UserError(f"model.overrides.num_classes: {mismatch(outputs, classes, data.dataset)}")
