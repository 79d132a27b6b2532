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
a device needs onnxruntime, numpy and pillow.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitdeploy.errors import UserError
from vitdeploy.storage import sha256_file

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
# Opset -> the first ONNX Runtime release implementing it (ONNX Runtime's compatibility matrix).
OPSET_FIRST_ORT = {15: "1.10", 16: "1.11", 17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 22: "1.20"}
MAX_MEMBER_BYTES = 2 << 30  # no single bundle file is larger than 2 GiB


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    preprocess: dict[str, Any]
    labels: list[str]

    @property
    def model(self) -> Path:
        return self.root / self.manifest["model"]["file"]


# ---------------------------------------------------------------- packaging


def build_manifest_for(model: Path) -> tuple[dict[str, Any], Path]:
    """The build manifest beside an artifact (`NAME.onnx` or `NAME.fp32.onnx` -> `NAME.json`)."""
    if model.suffix != ".onnx" or not model.is_file():
        raise UserError(f"{model}: not an .onnx file")
    stem = model.name.removesuffix(".onnx").removesuffix(".fp32")
    path = model.with_name(f"{stem}.json")
    if not path.is_file():
        raise UserError(f"{model}: no build manifest {path.name} beside it; package the outputs of `vitdeploy build`")
    try:
        manifest = json.loads(path.read_text())
        if not all(isinstance(manifest.get(k), dict) for k in ("preprocess", "evaluate")):
            raise KeyError("preprocess/evaluate")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a vitdeploy build manifest ({err})") from None
    return manifest, path


def graph_facts(model: Path) -> dict[str, Any]:
    """Opsets, input, output, and the operator domains ONNX Runtime alone implements."""
    import onnx

    from vitdeploy.graph import load_checked

    proto = load_checked(model)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    inp = proto.graph.input[0]
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
    contrib = sorted({n.op_type for n in proto.graph.node if n.domain == "com.microsoft"})
    minimum = OPSET_FIRST_ORT.get(opsets.get("ai.onnx", 0), "1.10")
    return {
        "opsets": opsets,
        "ir_version": proto.ir_version,
        "input": {"name": inp.name, "shape": dims, "dtype": dtype},
        "output": proto.graph.output[0].name,
        "onnxruntime_only_ops": contrib,
        "min_onnxruntime": minimum,
    }


def preprocess_file(manifest: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    pre = manifest["preprocess"]
    return {
        "input_name": facts["input"]["name"],
        "dtype": facts["input"]["dtype"],
        "layout": pre.get("layout", "NCHW"),
        "size": pre["img_size"],
        "resize": "shorter side to size, then center crop; no change when the image is already size x size",
        "interpolation": pre["interpolation"],
        "color": "RGB",
        "scale": pre.get("scale", "1/255"),
        "mean": pre["mean"],
        "std": pre["std"],
    }


def package(
    model: Path,
    out: Path,
    *,
    ort_format: bool = False,
    benchmarks: list[dict[str, Any]] | None = None,
    bench_environment: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle for a built artifact to `out` (a folder, or a file ending in .tar.gz)."""
    manifest, manifest_path, role = built_artifact(model)
    facts = graph_facts(model)
    classes = manifest["preprocess"].get("classes") or []
    if not classes:
        raise UserError(f"{manifest_path}: the manifest lists no class names")
    archive = out.name.endswith((".tar.gz", ".tgz"))
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    try:
        shutil.copyfile(model, staging / "model.onnx")
        (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
        (staging / "preprocess.json").write_text(json.dumps(preprocess_file(manifest, facts), indent=2) + "\n")
        extra = convert_to_ort(staging / "model.onnx", staging) if ort_format else {}
        record = bundle_record(manifest, role, facts, staging, extra, benchmarks or [], bench_environment)
        (staging / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
        publish_bundle(staging, out, archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def built_artifact(model: Path) -> tuple[dict[str, Any], Path, str]:
    """(build manifest, its path, the file's role in it) for an unchanged output of `vitdeploy
    build`; a UserError for anything else. Callers check this before any slow work."""
    manifest, path = build_manifest_for(model)
    return manifest, path, artifact_role(manifest, model)


def artifact_role(manifest: dict[str, Any], model: Path) -> str:
    """Which of the build's outputs `model` is ("onnx": the recipe's artifact, "fp32_onnx": the
    FP32 export beside an INT8 one), checked against the hash the build recorded."""
    for role, record in (manifest.get("artifacts") or {}).items():
        if record.get("file") == model.name:
            if sha256_file(model) != record.get("sha256"):
                raise UserError(f"{model}: changed since it was built (its sha256 is not the manifest's); rebuild it")
            return role
    raise UserError(f"{model}: the build manifest beside it does not list this file")


def quantization_record(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """How the artifact's INT8 was made, as far as a device needs to know (None: not quantized)."""
    q = manifest.get("quantize") or {}
    if q.get("mode", "none") == "none":
        return None
    keys = ("mode", "format", "activation_type", "weight_type", "per_channel", "reduce_range", "reduce_range_reason")
    return {k: q.get(k) for k in keys}


def bundle_record(
    manifest: dict[str, Any],
    role: str,
    facts: dict[str, Any],
    folder: Path,
    ort_info: dict[str, Any],
    benchmarks: list[dict[str, Any]],
    bench_environment: dict[str, Any] | None,
) -> dict[str, Any]:
    import onnxruntime as ort

    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir()) if p.name != MANIFEST
    }
    top1 = manifest["evaluate"]["top1"]
    final = role == "onnx"  # the recipe's artifact; else the FP32 export beside it
    accuracy = top1.get("onnx_int8", top1.get("onnx_fp32")) if final else top1.get("onnx_fp32")
    return {
        "format": BUNDLE_FORMAT,
        "name": manifest.get("name"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "model": {"file": "model.onnx", **facts},
        "ort_format": ort_info or None,
        "accuracy": {
            "top1": accuracy,
            "split": manifest["evaluate"].get("split"),
            "images": manifest["evaluate"].get("images"),
            "per_runtime": {k: v.get("top1") for k, v in (manifest.get("runtimes") or {}).items()} if final else {},
        },
        "quantization": quantization_record(manifest) if final else None,
        "recipe_sha256": (manifest.get("recipe") or {}).get("sha256"),
        "architecture": (manifest.get("model") or {}).get("architecture"),
        "benchmarks": benchmarks,
        "benchmark_environment": bench_environment,
        "packaged_with": {"onnxruntime": ort.__version__},
    }


def convert_to_ort(onnx_path: Path, folder: Path) -> dict[str, Any]:
    """ONNX Runtime's converter: model.ort plus required_operators.config; outputs checked equal."""
    import subprocess
    import sys

    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_path), "--output_dir", str(work)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        ort_files = sorted(work.glob("*.ort"))
        configs = sorted(work.glob("*.config"))
        if done.returncode != 0 or not ort_files or not configs:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"{onnx_path.name}: ONNX Runtime could not convert it to ORT format ({tail[0]})")
        shutil.move(ort_files[0], folder / "model.ort")
        shutil.move(configs[0], folder / "required_operators.config")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    diff = max_output_difference(onnx_path, folder / "model.ort")
    if diff > 1e-4:
        raise UserError(f"{onnx_path.name}: the ORT-format model's outputs differ by {diff:.3g}; not packaged")
    return {
        "file": "model.ort",
        "operators_config": "required_operators.config",
        "max_abs_output_diff_vs_onnx": diff,
        "min_onnxruntime": ort.__version__,  # ORT format files are read by this release and newer
    }


def max_output_difference(a: Path, b: Path, batch: int = 4) -> float:
    import numpy as np
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b)]
    inp = sessions[0].get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = [s.run(None, {inp.name: x})[0] for s in sessions]
    return float(np.abs(outs[0] - outs[1]).max())


def publish_bundle(staging: Path, out: Path, archive: bool) -> None:
    """Rename the finished folder (or a finished archive of it) onto `out`: all or nothing."""
    if archive:
        tmp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tf:
            for p in sorted(staging.iterdir()):
                tf.add(p, arcname=p.name)
        os.replace(tmp, out)
        return
    if out.exists():
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out}: exists and is not a bundle; choose another --out")
        shutil.rmtree(out)
    os.replace(staging, out)
    staging.mkdir()  # the caller removes it


# ---------------------------------------------------------------- opening


def open_bundle(path: Path, scratch: Path | None = None) -> Bundle:
    """Verify and open a bundle folder or .tar.gz.

    An archive is extracted into `scratch` (the caller removes it); without one, into a new
    temporary folder removed when the process exits.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such bundle")
    if not path.is_dir() and scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="vitdeploy-bundle-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    root = path if path.is_dir() else extract(path, scratch)
    manifest = read_json(root / MANIFEST, path)
    verify(root, manifest, path)
    preprocess = read_json(root / "preprocess.json", path)
    labels = (root / "labels.txt").read_text().splitlines()
    return Bundle(root, manifest, preprocess, labels)


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
            tf.extractall(into, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as err:
        raise UserError(f"{archive}: not a readable bundle archive ({err})") from None
    return into


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
