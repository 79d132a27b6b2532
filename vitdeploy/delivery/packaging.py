"""Packaging a built artifact into an edge bundle (the layout is described in
`vitdeploy.runtime.bundle`, which opens and verifies bundles on the device).

The build side: the artifact is checked against its build manifest (hash included) before any
slow work, the graph's facts are read with the onnx package, and an optional ORT-format copy is
converted and checked equal to the ONNX model. The finished folder or archive is renamed into
place, so a bundle is published whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from vitdeploy.core.contract import BuildManifest, InputContract
from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import atomic_path, sha256_file, storage_faults, writable_folder
from vitdeploy.runtime.bundle import BUNDLE_FORMAT, MANIFEST

# Opset -> the first ONNX Runtime release implementing it (ONNX Runtime's compatibility matrix).
OPSET_FIRST_ORT = {15: "1.10", 16: "1.11", 17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 22: "1.20"}


def build_manifest_for(model: Path) -> tuple[BuildManifest, Path]:
    """The build manifest beside an artifact (`NAME.onnx` or `NAME.fp32.onnx` -> `NAME.json`)."""
    if model.suffix != ".onnx" or not model.is_file():
        raise UserError(f"{model}: not an .onnx file")
    stem = model.name.removesuffix(".onnx").removesuffix(".fp32")
    path = model.with_name(f"{stem}.json")
    if not path.is_file():
        raise UserError(f"{model}: no build manifest {path.name} beside it; package the outputs of `vitdeploy build`")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not a vitdeploy build manifest ({err})") from None
    return BuildManifest.from_dict(data, str(path)), path


def graph_facts(model: Path) -> dict[str, Any]:
    """Opsets, input, output, and the operator domains ONNX Runtime alone implements."""
    import onnx

    from vitdeploy.onnx.graph import load_checked

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
    contract = manifest.input.with_input(facts["input"]["name"], facts["input"]["dtype"])
    classes = contract.classes
    if not classes:
        raise UserError(f"{manifest_path}: the manifest lists no class names")
    archive = out.name.endswith((".tar.gz", ".tgz"))
    parent = writable_folder(out.parent)
    with storage_faults(parent, out.name):  # a full or read-only disk: one line naming the folder
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
        try:
            write_bundle(staging, model, manifest, role, facts, contract, ort_format, benchmarks, bench_environment)
            publish_bundle(staging, out, archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def write_bundle(
    staging: Path,
    model: Path,
    manifest: BuildManifest,
    role: str,
    facts: dict[str, Any],
    contract: InputContract,
    ort_format: bool,
    benchmarks: list[dict[str, Any]] | None,
    bench_environment: dict[str, Any] | None,
) -> None:
    """Every file of the bundle, into the staging folder."""
    classes = contract.classes
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    shutil.copyfile(model, staging / "model.onnx")
    (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes))
    (staging / "preprocess.json").write_text(json.dumps(contract.bundle_record(), indent=2) + "\n")
    extra = convert_to_ort(staging / "model.onnx", staging) if ort_format else {}
    record = bundle_record(manifest, role, facts, staging, extra, benchmarks or [], bench_environment)
    (staging / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")


def built_artifact(model: Path) -> tuple[BuildManifest, Path, str]:
    """(build manifest, its path, the file's role in it) for an unchanged output of `vitdeploy
    build`; a UserError for anything else. Callers check this before any slow work."""
    manifest, path = build_manifest_for(model)
    return manifest, path, artifact_role(manifest, model)


def artifact_role(manifest: BuildManifest, model: Path) -> str:
    """Which of the build's outputs `model` is ("onnx": the recipe's artifact, "fp32_onnx": the
    FP32 export beside an INT8 one), checked against the hash the build recorded."""
    found = manifest.role_of(model.name)
    if found is None:
        raise UserError(f"{model}: the build manifest beside it does not list this file")
    role, record = found
    if sha256_file(model) != record.sha256:
        raise UserError(f"{model}: changed since it was built (its sha256 is not the manifest's); rebuild it")
    return role


def quantization_record(manifest: BuildManifest) -> dict[str, Any] | None:
    """How the artifact's INT8 was made, as far as a device needs to know (None: not quantized)."""
    q = manifest.quantize or {}
    if q.get("mode", "none") == "none":
        return None
    keys = ("mode", "format", "activation_type", "weight_type", "per_channel", "reduce_range", "reduce_range_reason")
    return {k: q.get(k) for k in keys} | {"backend": q.get("backend", "onnxruntime")}


def bundle_record(
    manifest: BuildManifest,
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
    final = role == "onnx"  # the recipe's artifact; else the FP32 export beside it
    return {
        "format": BUNDLE_FORMAT,
        "name": manifest.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "model": {"file": "model.onnx", **facts},
        "ort_format": ort_info or None,
        "accuracy": {
            "top1": manifest.top1_of(role),
            "split": manifest.split,
            "images": manifest.images,
            "per_runtime": manifest.runtime_top1 if final else {},
        },
        "quantization": quantization_record(manifest) if final else None,
        "recipe_sha256": manifest.recipe_sha256,
        "architecture": manifest.architecture,
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

    from vitdeploy.runtime.sessions import open_session

    sessions = [open_session(p) for p in (a, b)]
    inp = sessions[0].get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outs = [s.run(None, {inp.name: x})[0] for s in sessions]
    return float(np.abs(outs[0] - outs[1]).max())


def publish_bundle(staging: Path, out: Path, archive: bool) -> None:
    """Rename the finished folder (or a finished archive of it) onto `out`: all or nothing."""
    if archive:
        with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tf:
            for p in sorted(staging.iterdir()):
                tf.add(p, arcname=p.name)
        return
    if out.exists() and not (out / MANIFEST).is_file():
        raise UserError(f"{out}: exists and is not a bundle; choose another --out")
    # The old bundle stays whole until the new one is in place (renames need no space).
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    staging.mkdir()  # the caller removes it
