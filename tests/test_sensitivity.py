"""`vitdeploy sensitivity`: each layer quantized alone; the layer reading outliers shows up first."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.recipe.schema import ExportSpec, OptimizeSpec
from vitdeploy.torch.export import export_onnx

from .conftest import tiny_vit

runner = CliRunner()


@torch.no_grad()
def with_outliers_before(model: torch.nn.Module, block: int, scale: float = 60.0) -> torch.nn.Module:
    """Channels 0-1 of block `block`'s norm2 output made `scale` times larger, fc1 reading them
    `scale` times smaller: the same function, with the outliers trained ViTs have."""
    norm, fc1 = model.blocks[block].norm2, model.blocks[block].mlp.fc1
    norm.weight[:2] *= scale
    norm.bias[:2] *= scale
    fc1.weight[:, :2] /= scale
    return model


def test_the_layer_reading_outlier_channels_is_the_most_sensitive(cifar10: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = with_outliers_before(tiny_vit(), block=1)
    raw = export_onnx(model, ExportSpec(), 32, tmp_path / "raw.onnx")
    fp32 = tmp_path / "m.fp32.onnx"
    optimize_transformer(raw, fp32, OptimizeSpec(), 3, 48, fuse_attention=False)
    args = ["sensitivity", str(fp32), "--data", "cifar10:train", "--images", "128", "--calibration", "64"]
    done = runner.invoke(app, [*args, "--json", str(tmp_path / "s.json")])
    assert done.exit_code == 0, done.output[-3000:]
    layers = json.loads((tmp_path / "s.json").read_text())["layers"]
    # per block: q, k, v (split for export, one input: one group), proj, fc1, fc2; the classifier stays float
    assert len(layers) == 2 * 4 and sum(len(row["nodes"]) for row in layers) == 2 * 6
    errors = [row["logit_error"] for row in layers]
    assert errors == sorted(errors, reverse=True)
    assert layers[0]["nodes"] == ["/blocks/blocks.1/mlp/fc1/MatMul"], [row["group"] for row in layers[:3]]
    assert layers[0]["logit_error"] > 3 * layers[1]["logit_error"]


def test_a_file_with_nothing_to_quantize_is_refused_in_one_line(tmp_path: Path) -> None:
    done = runner.invoke(app, ["sensitivity", str(tmp_path / "absent.onnx")])
    assert done.exit_code == 2 and "no such model file" in done.output
