"""Portable artifacts: standard ONNX operators only, checked on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from vitdeploy.build.pipeline import build
from vitdeploy.core.errors import BuildError, RecipeError
from vitdeploy.recipe.schema import load_recipe, parse_recipe

from .conftest import TEACHER, TINY_OVERRIDES


def test_portable_static_int8_is_checked_on_both_runtimes(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    recipe = {
        "name": "portable",
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES | {"patch_size": 4, "embed_dim": 192, "depth": 6,
                                                                                 "num_heads": 3, "mlp_ratio": 2},
                  "checkpoint": str(TEACHER)},
        "quantize": {"mode": "static", "calibration": {"samples": 64}},
        "evaluate": {"samples": 500},
        "runtimes": ["onnxruntime", "openvino", "openvino-bf16"],
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    path = tmp_path / "portable.yaml"
    path.write_text(json.dumps(recipe))
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BuildError, match="runtime openvino-bf16: this CPU has no bfloat16 support"):
            build(load_recipe(path), path, torch.device("cpu"))
        assert not (tmp_path / "out" / "portable.onnx").exists()
        recipe["runtimes"] = ["onnxruntime", "openvino"]
        path.write_text(json.dumps(recipe))
    m = build(load_recipe(path), path, torch.device("cpu"))
    graph = onnx.load(str(tmp_path / "out" / "portable.onnx")).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)
    assert set(m["runtimes"]) == set(recipe["runtimes"])
    for runtime in m["runtimes"].values():
        assert runtime["parity_vs_pytorch"]["top1_agreement"] >= 0.95
        assert abs(runtime["top1"] - m["evaluate"]["top1"]["onnx_fp32"]) <= 0.02
        assert runtime["version"]
    assert "skipped" in m["optimize"]


def test_runtimes_are_validated() -> None:
    base = {"name": "r", "model": {"name": "vit_tiny_patch16_224"}}
    with pytest.raises(RecipeError, match="runtimes"):
        parse_recipe(base | {"runtimes": ["tensorflow"]})
    with pytest.raises(RecipeError, match="listed twice"):
        parse_recipe(base | {"runtimes": ["openvino", "openvino"]})
