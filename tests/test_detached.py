"""Graph passes with the linear weights set aside give the same file as with them in memory."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process

from vitdeploy.onnx import detached
from vitdeploy.onnx.detached import attach_weights, detach_weights
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.quantize import infer_types
from vitdeploy.recipe.schema import ExportSpec, OptimizeSpec
from vitdeploy.torch.export import export_onnx

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def raw_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_onnx(tiny_vit(), ExportSpec(), 32, tmp_path_factory.mktemp("detached") / "raw.onnx")


@pytest.fixture
def every_weight_set_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detached, "SET_ASIDE_BYTES", 0)  # the tiny model's weights are all small


def test_only_linear_and_conv_weights_are_set_aside_and_all_come_back(raw_onnx: Path) -> None:
    model = onnx.load(str(raw_onnx))
    before = model.SerializeToString()
    weights = detach_weights(model, min_bytes=0)
    readers = {name: n.op_type for n in model.graph.node for name in n.input[1:2]}
    assert weights and {readers[name] for name in weights} <= {"MatMul", "Gemm", "Conv"}
    assert all(not i.HasField("raw_data") for i in model.graph.initializer if i.name in weights)
    attach_weights(model, weights)
    assert model.SerializeToString() == before and not weights


def test_a_tensor_made_from_weights_set_aside_is_refused(raw_onnx: Path) -> None:
    model = onnx.load(str(raw_onnx))
    weights = detach_weights(model, min_bytes=0)
    name = next(iter(weights))
    # what concatenating two weights set aside would give: the shape, but no data
    made = onnx.TensorProto(name=f"{name}_concat", data_type=onnx.TensorProto.FLOAT, dims=[2, 48, 48])
    model.graph.initializer.append(made)
    with pytest.raises(RuntimeError, match=f"{name}_concat"):
        attach_weights(model, weights)


@pytest.mark.usefixtures("every_weight_set_aside")
def test_fusion_without_the_weights_writes_the_same_file(raw_onnx: Path, tmp_path: Path, monkeypatch) -> None:
    aside = optimize_transformer(raw_onnx, tmp_path / "aside.onnx", OptimizeSpec(), 3, 48, fuse_attention=False)
    monkeypatch.setattr(detached, "detach_weights", lambda model, min_bytes=None: {})  # the weights stay in
    kept = optimize_transformer(raw_onnx, tmp_path / "kept.onnx", OptimizeSpec(), 3, 48, fuse_attention=False)
    assert aside["fused_operators"] == kept["fused_operators"] and aside["fused_operators"]["SkipLayerNormalization"] == 4
    assert (tmp_path / "aside.onnx").read_bytes() == (tmp_path / "kept.onnx").read_bytes()


@pytest.mark.usefixtures("every_weight_set_aside")
def test_type_inference_without_the_weights_matches_onnx_runtime_s(raw_onnx: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused.onnx"
    optimize_transformer(raw_onnx, fused, OptimizeSpec(), 3, 48, fuse_attention=False)
    infer_types(fused, tmp_path / "ours.onnx")
    quant_pre_process(str(fused), str(tmp_path / "theirs.onnx"), skip_optimization=True, auto_merge=True)
    ours, theirs = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "theirs.onnx"))
    assert len(ours.graph.value_info) > len(onnx.load(str(fused)).graph.value_info)
    assert ours.SerializeToString() == theirs.SerializeToString()
