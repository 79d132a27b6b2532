"""`vitdeploy convert --fp16` on a real exported and fused ViT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from vitdeploy.onnx.fp16 import convert_fp16
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.graph import PREPROCESS_KEY, write_preprocess
from vitdeploy.recipe.schema import ExportSpec, OptimizeSpec
from vitdeploy.torch.export import INPUT_NAME, export_onnx
from vitdeploy.torch.models import split_qkv

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fp16")
    raw = export_onnx(split_qkv(tiny_vit()), ExportSpec(), 32, folder / "raw.onnx")
    fused = folder / "m.fp32.onnx"
    optimize_transformer(raw, fused, OptimizeSpec(), 3, 48, fuse_attention=True)
    model = onnx.load(str(fused))
    write_preprocess(model, {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "img_size": 32})
    onnx.save(model, str(fused))
    return fused


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]


def test_fp16_halves_the_file_keeps_norms_fp32_and_agrees(fp32_onnx: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.fp16.onnx"
    report = convert_fp16(fp32_onnx, target)
    assert report["bytes_after"] < 0.55 * report["bytes_before"]
    model = onnx.load(str(target))
    graph = model.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # callers feed float32 as before
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    big = [i for i in graph.initializer if np.prod(i.dims) >= 48 * 48]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)
    # Every LayerNormalization is fed through a Cast to float32, never float16.
    producers = {o: n for n in graph.node for o in n.output}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(producers[n.input[0]].op_type == "Cast" for n in norms)
    assert all(next(a.i for a in producers[n.input[0]].attribute if a.name == "to") == TensorProto.FLOAT for n in norms)
    assert PREPROCESS_KEY in {p.key for p in model.metadata_props}

    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    ref, half = run(fp32_onnx, x), run(target, x)
    assert np.abs(ref - half).max() < 2e-2
    assert (ref.argmax(1) == half.argmax(1)).mean() == 1.0


def test_quantized_or_fp16_input_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    half = tmp_path / "h.onnx"
    convert_fp16(fp32_onnx, half)
    with pytest.raises(ValueError, match="already holds float16"):
        convert_fp16(half, tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()


def test_convert_cli_names_the_output_and_rejects_bad_input(fp32_onnx: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    local = tmp_path / fp32_onnx.name
    local.write_bytes(fp32_onnx.read_bytes())
    ok = CliRunner().invoke(app, ["convert", str(local), "--fp16"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "m.fp16.onnx").is_file()
    assert CliRunner().invoke(app, ["convert", str(tmp_path / "missing.onnx"), "--fp16"]).exit_code == 2
    assert CliRunner().invoke(app, ["convert", str(local)]).exit_code == 2  # no conversion named
    code = "import sys\nfrom vitdeploy.onnx.fp16 import convert_fp16\nassert 'torch' not in sys.modules\nprint('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
