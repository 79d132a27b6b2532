"""End to end on real CIFAR-10 images: export, parity, fusion, INT8, manifest, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import atomic_path
from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.pipeline.build import build, run_stages
from vitdeploy.recipe.schema import load_recipe, parse_recipe

from .conftest import ROOT, TEACHER

CPU = torch.device("cpu")


def teacher_recipe(tmp_path: Path, name: str, samples: int = 1000, **sections) -> Path:
    """The shipped vit_static_int8 recipe (the teacher to static INT8), pointed at a temporary output and fewer images."""
    recipe = load_recipe(ROOT / "recipes" / "vit_static_int8.yaml").model_dump(mode="json")
    recipe["name"] = name
    recipe["output"]["dir"] = str(tmp_path / "out")
    recipe["evaluate"]["samples"] = samples
    recipe["quantize"]["calibration"]["samples"] = 128
    for key, value in sections.items():
        replace = not isinstance(value, dict) or value.get("mode") in ("none", "dynamic")  # no static fields left behind
        recipe[key] = value if replace else recipe[key] | value
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


@pytest.fixture(scope="module")
def static_build(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("static")
    path = teacher_recipe(tmp, "static")
    return build(load_recipe(path), path, CPU)


def test_teacher_is_committed_and_small() -> None:
    assert TEACHER.is_file()
    assert TEACHER.stat().st_size < 20e6


def test_static_int8_build_keeps_teacher_accuracy(static_build: dict) -> None:
    m = static_build
    top1 = m["evaluate"]["top1"]
    assert m["evaluate"]["images"] == 1000
    # The committed teacher scores far above chance (10%) on real test images ...
    assert top1["torch"] > 0.60
    # ... and ONNX FP32 equals PyTorch, INT8 stays within a point of it.
    assert abs(top1["onnx_fp32"] - top1["torch"]) <= 0.002
    assert top1["onnx_fp32"] - top1["onnx_int8"] <= 0.01
    assert m["export"]["parity"]["top1_agreement"] >= 0.995
    assert m["export"]["parity"]["max_abs_logit_diff"] < 1e-3


def test_static_int8_artifact_is_a_quarter_of_fp32_and_mostly_int8(static_build: dict) -> None:
    sizes = static_build["sizes_bytes"]
    assert sizes["onnx"] <= 0.30 * sizes["fp32_onnx"]
    q = static_build["quantize"]
    assert q["weights"]["int8_share"] > 0.9
    assert q["quantized_ops"]["QuantizeLinear"] > 0 and q["quantized_ops"]["DequantizeLinear"] > 0
    # Softmax stays FP32: no attention score MatMul was quantized.
    assert all("attn/MatMul" in n or "head" in n for n in q["excluded_nodes"])


def test_manifest_records_what_a_deployer_needs(static_build: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    m = static_build
    out = Path(m["recipe"]["resolved"]["output"]["dir"])
    on_disk = json.loads((out / "static.json").read_text())
    assert on_disk["artifacts"] == m["artifacts"]
    for key in ("mean", "std", "img_size", "interpolation", "input_name"):
        assert key in m["preprocess"]
    assert m["source"]["checkpoint_sha256"] and len(m["recipe"]["sha256"]) == 64
    assert m["optimize"]["fused_operators"]["SkipLayerNormalization"] > 0
    assert {"export", "optimize", "quantize", "evaluate", "total"} <= set(m["timings_s"])
    assert m["environment"]["onnxruntime"] == ort.__version__
    from vitdeploy.core.storage import sha256_file

    assert sha256_file(out / "static.onnx") == m["artifacts"]["onnx"]["sha256"]
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_artifact_runs_at_another_batch_size_with_manifest_preprocessing(static_build: dict, cifar10: Path) -> None:
    m = static_build
    out = Path(m["recipe"]["resolved"]["output"]["dir"])
    session = ort.InferenceSession(str(out / "static.onnx"))
    test = DataStore(cifar10).load("cifar10", "test").subset(7, seed=5)
    p = m["preprocess"]
    from vitdeploy.recipe.schema import Preprocess

    x = preprocess(test.images, Preprocess(mean=p["mean"], std=p["std"], interpolation=p["interpolation"]), p["img_size"])
    logits = session.run(None, {p["input_name"]: x})[0]
    assert logits.shape == (7, 10)


def test_dynamic_int8_with_fused_attention(cifar10: Path, tmp_path: Path) -> None:
    path = teacher_recipe(tmp_path, "dyn", samples=2000, optimize={"fuse_attention": True},
                          quantize={"mode": "dynamic", "op_types": ["MatMul", "Gemm", "Attention"]})  # fmt: skip
    m = build(load_recipe(path), path, CPU)
    assert m["optimize"]["fused_operators"].get("Attention", 0) >= 1
    assert m["quantize"]["quantized_ops"].get("QAttention", 0) >= 1
    top1 = m["evaluate"]["top1"]
    assert top1["onnx_fp32"] - top1["onnx_int8"] <= 0.015
    assert m["sizes_bytes"]["onnx"] <= 0.30 * m["sizes_bytes"]["fp32_onnx"]


def test_recipes_of_one_model_share_its_fp32_export(static_build: dict, cifar10: Path) -> None:
    """A second recipe that only quantizes differently reuses the first one's FP32 file; other
    export options get their own."""
    out = Path(static_build["recipe"]["resolved"]["output"]["dir"])
    tmp = out.parent
    path = teacher_recipe(tmp, "static_entropy", samples=200, quantize={"calibration": {"method": "entropy", "samples": 64}})
    m = build(load_recipe(path), path, CPU)
    assert m["export"]["reused"] and "optimize" not in m["timings_s"]
    assert m["export"]["parity"]["top1_agreement"] >= 0.995
    fp32 = {name: ort.InferenceSession(str(out / f"{name}.fp32.onnx")) for name in ("static", "static_entropy")}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    a, b = (s.run(None, {"pixel_values": x})[0] for s in fp32.values())
    np.testing.assert_array_equal(a, b)
    other = teacher_recipe(tmp, "static_opset18", samples=200, export={"opset": 18})
    assert "reused" not in build(load_recipe(other), other, CPU)["export"]


def test_failed_build_leaves_no_artifact(cifar10: Path, tmp_path: Path) -> None:
    # Calibrating from a split that does not exist fails after export and optimization ran.
    path = teacher_recipe(tmp_path, "broken", samples=100)
    recipe = load_recipe(path)
    recipe.quantize.calibration.split = "validation"
    with pytest.raises(UserError, match="no split 'validation'"):
        build(recipe, path, CPU)
    out = tmp_path / "out"
    assert (out / ".work" / "broken" / "fp32.onnx").is_file()  # the work got that far
    assert not list(out.glob("*.onnx")) and not list(out.glob("*.json"))


def test_atomic_path_removes_temporary_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.onnx"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_finetune_learns_checkpoints_and_resumes(cifar10: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(
        {
            "name": "ft",
            "model": {"name": "vit_tiny_patch16_224", "overrides": {"img_size": 32, "patch_size": 8, "num_classes": 10,
                                                                    "embed_dim": 64, "depth": 2, "num_heads": 2}},
            "stages": [{"stage": "finetune", "epochs": 2, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 0.2,
                        "train_samples": 3000, "eval_samples": 500}],
            "output": {"dir": str(tmp_path)},
        }
    )  # fmt: skip
    model, reports = run_stages(recipe, CPU)
    history = reports[0]["report"]["epochs"]
    assert len(history) == 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_acc"] > 0.2  # chance is 0.1
    stage_dirs = list((tmp_path / ".work" / "ft").iterdir())
    assert len(stage_dirs) == 1 and (stage_dirs[0] / "last.pt").is_file()

    # A cache hit restores the stage's report with its model.
    _, reports_cached = run_stages(recipe, CPU)
    assert reports_cached[0]["cached"] and reports_cached[0]["report"] == reports[0]["report"]

    # The finished checkpoint resumes without training again and gives the same weights.
    (stage_dirs[0] / "model.safetensors").unlink()
    again, reports2 = run_stages(recipe, CPU)
    assert not reports2[0]["cached"] and reports2[0]["report"]["epochs"] == history
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x))


def test_build_cli_end_to_end(cifar10: Path, tmp_path: Path) -> None:
    path = teacher_recipe(tmp_path, "cli", samples=200, quantize={"mode": "none"})
    res = subprocess.run([sys.executable, "-m", "vitdeploy.cli", "build", str(path), "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ONNX FP32" in res.stdout
    manifest = json.loads((tmp_path / "out" / "cli.json").read_text())
    assert manifest["quantize"] is None and (tmp_path / "out" / "cli.onnx").is_file()
    assert np.isclose(manifest["evaluate"]["top1"]["onnx_fp32"], manifest["evaluate"]["top1"]["torch"], atol=0.005)
