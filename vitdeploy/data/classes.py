"""The model against the dataset, compared before any work starts: its head with the classes,
its input size with the images.

A 10-class model built on a 3-class folder would train, export, quantize and package, and only
`predict` would find that its outputs cannot be named. Both counts are read cheaply: the
classes from the folder or archive member names (no image decoded) or the cache's record, the
head from the recipe's `num_classes` or the checkpoint's stored architecture (no torch).

A folder of the user's own photos has every size and mode: its images are decoded to the
model's input size (shorter side, then centre crop, as `predict` does), read from the same
places, so training, calibration and evaluation all see what the deployed model will.
"""

from __future__ import annotations

import functools
import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from vitdeploy.core.architecture import read_architecture
from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore, dataset_name
from vitdeploy.recipe.schema import DataSpec, ModelSpec, Recipe
from vitdeploy.runtime.imaging import IMAGE_SUFFIXES, scale_size


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
        stat = spec.source.stat()  # a changed source is listed anew
        return _source_classes(
            spec.source.resolve(), stat.st_mtime_ns, stat.st_size, frozenset({spec.train_split, spec.eval_split})
        )
    meta = DataStore(spec.cache_dir).meta(dataset_name(spec))
    return tuple(meta["classes"]) if meta else None


def stored_override(spec: ModelSpec, key: str) -> int | None:
    """An override the checkpoint's stored architecture records (None: not a vitdeploy file)."""
    stored = read_architecture(spec.checkpoint) if spec.checkpoint is not None else None
    return stored.overrides.get(key) if stored is not None else None


@functools.lru_cache(maxsize=8)
def _source_classes(source: Path, mtime_ns: int, size: int, splits: frozenset[str]) -> tuple[str, ...] | None:
    """Listed once per process, not per question: a build asks three times, and a 60,000-image
    archive takes 2 s to list."""
    try:
        paths = [p for p in (n.split("/") for n in _image_names(source)) if len(p) >= 2]
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError):
        return None  # decoding names the problem with its own message
    found = {p[-2] for p in paths if len(p) >= 3 and p[-3] in splits}
    if not found and len({tuple(p[:-2]) for p in paths}) == 1:  # one folder of class folders, split when decoded
        found = {p[-2] for p in paths}
    return tuple(sorted(found)) or None


def head_size(spec: ModelSpec) -> int | None:
    """The model's output count as the recipe or its checkpoint declares it (None: timm's default)."""
    if spec.overrides.num_classes is not None:
        return spec.overrides.num_classes
    return stored_override(spec, "num_classes")


def model_input_size(spec: ModelSpec) -> int | None:
    """The model's input size: the recipe's, the checkpoint's, or the one timm's name ends in."""
    size = spec.overrides.img_size or stored_override(spec, "img_size")
    if size is None and (m := re.search(r"_(\d{2,4})(?:\.|$)", spec.name)):
        size = int(m[1])
    return size


def decode_size(recipe: Recipe) -> int | None:
    """The size a recipe's own images are decoded to (None: a cached dataset, stored as it came):
    `data.image_size`, else the model's input size, enlarged to keep room for the evaluation
    crop (`crop_pct`) and for training's random crops."""
    if recipe.data.source is None:
        return None
    size = model_input_size(recipe.model)
    return recipe.data.image_size or (scale_size(size, recipe.data.preprocess.crop_pct) if size else None)


def mismatch(outputs: int, classes: tuple[str, ...], dataset: str) -> str:
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    return (
        f"the model has {outputs} outputs but dataset '{dataset}' has {len(classes)} classes ({shown}); "
        f"set model.overrides.num_classes: {len(classes)} (with model.reset_head: true to keep the checkpoint's "
        f"other weights), or use data with the model's {outputs} classes"
    )


def with_head_for_data(recipe: Recipe) -> Recipe:
    """A transfer without `num_classes` gets a head for every class the data has."""
    if not recipe.model.reset_head or recipe.model.overrides.num_classes is not None:
        return recipe
    classes = dataset_classes(recipe.data)
    if classes is None:
        raise UserError("model.reset_head: the data's classes cannot be listed before decoding; set model.overrides.num_classes")
    overrides = recipe.model.overrides.model_copy(update={"num_classes": len(classes)})
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"overrides": overrides})})


def check_head_matches(recipe: Recipe) -> None:
    """UserError when the declared head and the data's classes are both known and differ, or
    when the recipe asks for another head than the checkpoint's without `reset_head`."""
    model, data = with_head_for_data(recipe).model, recipe.data
    stored = stored_override(model, "num_classes")
    wanted = model.overrides.num_classes
    if stored is not None and wanted is not None and stored != wanted and not model.reset_head:
        raise UserError(
            f"model.overrides.num_classes: {wanted}, but {model.checkpoint} has a {stored}-class head; set "
            f"model.reset_head: true to start from its weights with a new {wanted}-class head"
        )
    outputs, classes = head_size(model), dataset_classes(data)
    if outputs is not None and classes is not None and outputs != len(classes):
        raise UserError(f"model.overrides.num_classes: {mismatch(outputs, classes, data.dataset)}")


def preprocessing_warning(recipe: Recipe) -> str | None:
    """Why the recipe's normalization may not fit its images, or None.

    A model trained here from random weights on a user's own folder is normalized with the
    recipe's defaults, CIFAR-10's mean and std, unless `data.preprocess` says otherwise; weights
    from timm bring their own, and a vitdeploy checkpoint was trained with the recipe's."""
    if recipe.data.dataset == "cifar10" or "preprocess" in recipe.data.model_fields_set:
        return None
    if recipe.model.pretrained or recipe.model.checkpoint is not None:
        return None
    mean = ", ".join(f"{v:.3f}" for v in recipe.data.preprocess.mean)
    return (
        f"data.preprocess is not set: '{recipe.data.dataset}' images are normalized with CIFAR-10's mean ({mean}) and "
        "std; set data.preprocess.mean and std to your images' statistics (ImageNet's for ImageNet-style photos)"
    )
