"""Edge bundles: everything a device needs to run a built model, each file under a checksum.

A bundle is a folder (or a .tar.gz of one):

    model.onnx          the artifact, as built and gated
    model.ort           optional: the same model in ONNX Runtime's ORT format
    required_operators.config
                        optional: the operator list a reduced-size ONNX Runtime build takes
    preprocess.json     input name, size, interpolation, scale, mean/std, layout, dtype
    labels.txt          one class name per line, in logit order
    bundle.json         sha256 and size of every other file, opset, minimum ONNX Runtime,
                        accuracy, recipe hash, and the figures it was benchmarked at

`open_bundle` verifies every checksum before anything is loaded: a file changed, added or
missing after packaging is refused with its name. No torch here, and no onnx package:
a device needs onnxruntime, numpy and pillow. Packaging is the build side's
(`vitdeploy.delivery.packaging`).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitdeploy.core.contract import InputContract
from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import sha256_file

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
MAX_MEMBER_BYTES = 2 << 30  # no single bundle file is larger than 2 GiB


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    preprocess: dict[str, Any]  # preprocess.json as written
    labels: list[str]
    contract: InputContract  # the same, read and checked

    @property
    def model(self) -> Path:
        return self.root / self.manifest["model"]["file"]


def open_bundle(path: Path, scratch: Path | None = None) -> Bundle:
    """Verify and open a bundle folder or .tar.gz.

    An archive is extracted into `scratch` (the caller removes it); without one, into a new
    temporary folder removed when the process exits.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such bundle")
    if path.suffix == ".onnx":
        raise UserError(f"{path}: a model, not a bundle; package it first: vitdeploy package {path} --out {path.stem}.tar.gz")
    if not path.is_dir() and scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="vitdeploy-bundle-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    root = path if path.is_dir() else extract(path, scratch)
    manifest = read_json(root / MANIFEST, path)
    verify(root, manifest, path)
    preprocess = read_json(root / "preprocess.json", path)
    contract = InputContract.from_record(preprocess, f"{path}: preprocess.json")
    labels = (root / "labels.txt").read_text().splitlines()
    return Bundle(root, manifest, preprocess, labels, contract)


def read_json(file: Path, bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{bundle}: {file.name} is missing; not a vitdeploy bundle") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{bundle}: {file.name} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{bundle}: {file.name} is not a JSON object")
    return data


def verify(root: Path, manifest: dict[str, Any], bundle: Path) -> None:
    """Every listed file present with its checksum, and nothing else beside them."""
    if manifest.get("format", 0) > BUNDLE_FORMAT:
        raise UserError(f"{bundle}: bundle format {manifest['format']} is newer than this vitdeploy reads ({BUNDLE_FORMAT})")
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.onnx" not in files:
        raise UserError(f"{bundle}: {MANIFEST} lists no files; not a vitdeploy bundle")
    present = {p.name for p in root.iterdir()} - {MANIFEST}
    for name in sorted(present - set(files)):
        raise UserError(f"{bundle}: {name} is not part of the bundle (added after packaging); refused")
    for name, record in files.items():
        file = root / name
        if Path(name).name != name or not file.is_file():
            raise UserError(f"{bundle}: {name} is missing")
        if file.stat().st_size != record.get("bytes") or sha256_file(file) != record.get("sha256"):
            raise UserError(f"{bundle}: {name} does not match its checksum in {MANIFEST} (changed after packaging); refused")


def extract(archive: Path, into: Path) -> Path:
    """Extract a bundle archive: plain files at the top level only, none oversized."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                if not m.isfile() or Path(m.name).name != m.name or m.name.startswith("."):
                    raise UserError(f"{archive}: member {m.name!r} is not a plain top-level file; refused")
                if m.size > MAX_MEMBER_BYTES:
                    raise UserError(f"{archive}: member {m.name!r} is {m.size} bytes; refused")
            # Every member was checked above to be a plain top-level file; Python's own "data"
            # filter (3.11.4+, 3.10.12+) is a second guard where the interpreter has it.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(into, members=members, **safe)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{archive}: not a readable bundle archive ({first}); bundles come from `vitdeploy package`") from None
    return into


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
