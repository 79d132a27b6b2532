"""Portable artifacts: standard ONNX operators only, checked on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from vitdeploy.core.errors import BuildError, RecipeError
from vitdeploy.onnx.graph import activation_matmuls
from vitdeploy.pipeline.build import build
from vitdeploy.recipe.schema import load_recipe, parse_recipe

from .conftest import TEACHER, TINY_OVERRIDES


def teacher_recipe(name: str, tmp_path: Path, quantize: dict, runtimes: list[str]) -> dict:
    """The reference teacher, scored on 500 test images, checked on `runtimes`."""
    return {
        "name": name,
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES | {"patch_size": 4, "embed_dim": 192, "depth": 6,
                                                                                 "num_heads": 3, "mlp_ratio": 2},
                  "checkpoint": str(TEACHER)},
        "quantize": quantize,
        "evaluate": {"samples": 500},
        "runtimes": runtimes,
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip


def test_portable_static_int8_is_checked_on_both_runtimes(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    recipe = teacher_recipe("portable", tmp_path, {"mode": "static", "calibration": {"samples": 64}},
                            ["onnxruntime", "openvino", "openvino-bf16"])  # fmt: skip
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


def test_nncf_backend_builds_a_checked_standard_int8_file(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    nncf = {"mode": "static", "backend": "nncf", "calibration": {"samples": 64}}
    recipe = teacher_recipe("by_nncf", tmp_path, nncf, ["onnxruntime", "openvino"])
    recipe["evaluate"] = {"samples": 300, "torch": False}  # the ONNX files are what is compared
    path = tmp_path / "by_nncf.yaml"
    path.write_text(json.dumps(recipe))
    m = build(load_recipe(path), path, torch.device("cpu"))
    model = onnx.load(str(tmp_path / "out" / "by_nncf.onnx"))
    weights = {i.name: i.data_type for i in model.graph.initializer}
    dequantized = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert sum(weights.get(name) == onnx.TensorProto.INT8 for name in dequantized) >= 24  # 4 Linears x 6 blocks
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    q = m["quantize"]
    assert q["backend"] == "nncf" and q["calibration"]["images"] == 64 and q["nncf_version"]
    producers = {o: n for n in model.graph.node for o in n.output}

    def dequantized_within(tensor: str, steps: int = 4) -> bool:  # through reshapes, transposes, scales
        node = producers.get(tensor)
        return node is not None and (node.op_type == "DequantizeLinear" or (
            steps > 0 and any(dequantized_within(i, steps - 1) for i in node.input[:1])))  # fmt: skip

    products = set(activation_matmuls(onnx.load(str(tmp_path / "out" / "by_nncf.fp32.onnx"))))  # q k^T, attn v
    scores = [n for n in model.graph.node if n.name in products and n.name.endswith("attn/MatMul")]
    assert len(scores) == 6 and all(dequantized_within(i) for n in scores for i in n.input)  # NNCF places these itself
    head = q["excluded_nodes"]  # the classifier stays float, as with ONNX Runtime's quantizer
    assert head and not any(n.name in head and n.op_type == "DequantizeLinear" for n in model.graph.node)
    top1 = m["evaluate"]["top1"]
    assert abs(top1["onnx_int8"] - top1["onnx_fp32"]) <= 0.02  # six of 300 images
    for runtime in m["runtimes"].values():
        assert abs(runtime["top1"] - top1["onnx_fp32"]) <= 0.02


def test_nncf_accuracy_control_keeps_the_held_out_top1_within_its_budget(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    from vitdeploy.data.datasets import VALIDATION, load_split, preprocess
    from vitdeploy.runtime.sessions import open_predictor

    quantize = {"mode": "static", "backend": "nncf", "nncf_max_drop": 0.0, "calibration": {"samples": 32}}
    recipe = teacher_recipe("controlled", tmp_path, quantize, ["onnxruntime", "openvino"])
    recipe |= {"evaluate": {"samples": 100, "torch": False}, "data": {"holdout": 200}}
    path = tmp_path / "controlled.yaml"
    path.write_text(json.dumps(recipe))
    r = load_recipe(path)
    control = build(r, path, torch.device("cpu"))["quantize"]["accuracy_control"]
    assert control == {"max_drop": 0.0, "validation_images": 200, "scored_on": "openvino", "smooth_quant": False}
    held = load_split(r.data, VALIDATION)
    x = preprocess(held.images, r.data.preprocess)
    top1 = {f: float((open_predictor(tmp_path / "out" / f, "openvino")(x).argmax(1) == held.labels).mean())
            for f in ("controlled.fp32.onnx", "controlled.onnx")}  # fmt: skip
    assert top1["controlled.onnx"] >= top1["controlled.fp32.onnx"]  # no image lost: the budget was 0 points
    with pytest.raises(RecipeError, match=r"set data\.holdout"):
        parse_recipe(recipe | {"data": {}})
    with pytest.raises(RecipeError, match="it needs backend nncf"):
        parse_recipe(recipe | {"quantize": {"mode": "static", "nncf_max_drop": 0.5}, "data": {"holdout": 10}})


def test_nncf_backend_refuses_what_it_would_ignore() -> None:
    base = {"name": "r", "model": {"name": "vit_tiny_patch16_224"}, "runtimes": ["openvino"]}
    nncf = {"mode": "static", "backend": "nncf"}
    with pytest.raises(RecipeError, match=r"calibration.method, per_channel: ONNX Runtime's quantizer options"):
        parse_recipe(base | {"quantize": nncf | {"per_channel": False, "calibration": {"method": "entropy"}}})
    with pytest.raises(RecipeError, match="backend nncf quantizes statically"):
        parse_recipe(base | {"quantize": nncf | {"mode": "dynamic"}})
    with pytest.raises(RecipeError, match="add openvino to runtimes"):
        parse_recipe(base | {"quantize": nncf, "runtimes": ["onnxruntime"]})
    assert parse_recipe(base | {"quantize": nncf | {"calibration": {"samples": 32}}}).quantize.backend == "nncf"
