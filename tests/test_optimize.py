"""The transformer optimizer step and the graph rewrites after it, on a real exported ViT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.graph import op_counts
from vitdeploy.recipe.schema import ExportSpec, OptimizeSpec
from vitdeploy.torch.export import INPUT_NAME, export_onnx
from vitdeploy.torch.models import split_qkv

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def raw_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_onnx(split_qkv(tiny_vit()), ExportSpec(), 32, tmp_path_factory.mktemp("opt") / "raw.onnx")


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]


def test_split_skip_layernorm_keeps_attention_fusion_and_outputs(raw_onnx: Path, tmp_path: Path) -> None:
    fused, split = tmp_path / "fused.onnx", tmp_path / "split.onnx"
    kept = optimize_transformer(raw_onnx, fused, OptimizeSpec(split_skip_layernorm=False), 3, 48, fuse_attention=True)
    done = optimize_transformer(raw_onnx, split, OptimizeSpec(), 3, 48, fuse_attention=True)

    assert kept["skip_layernorm_split"] == 0 and done["skip_layernorm_split"] == 4  # two per block
    fused_ops, split_ops = op_counts(onnx.load(str(fused))), op_counts(onnx.load(str(split)))
    assert fused_ops["SkipLayerNormalization"] == 4 and "SkipLayerNormalization" not in split_ops
    assert split_ops["LayerNormalization"] == fused_ops.get("LayerNormalization", 0) + 4
    assert split_ops["Attention"] == fused_ops["Attention"] == 2  # every block; the split runs after fusion
    assert done["residual_adds_reordered"] == 4  # two residual Adds per block (block 0's made fusion fail)
    onnx.checker.check_model(onnx.load(str(split)), full_check=True)

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(logits(split, x), logits(fused, x), atol=1e-4)
    np.testing.assert_allclose(logits(split, x), logits(raw_onnx, x), atol=1e-4)


def test_gelu_approximation_is_opt_in(raw_onnx: Path, tmp_path: Path) -> None:
    exact = optimize_transformer(raw_onnx, tmp_path / "a.onnx", OptimizeSpec(), 3, 48, fuse_attention=True)
    approx = optimize_transformer(raw_onnx, tmp_path / "b.onnx", OptimizeSpec(gelu_approximation=True), 3, 48, True)
    assert "FastGelu" not in exact["ops_after"] and approx["ops_after"].get("FastGelu") == 2
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(logits(tmp_path / "b.onnx", x), logits(tmp_path / "a.onnx", x), atol=1e-2)
