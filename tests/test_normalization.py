"""Weights from timm come with their own input statistics, and the build uses them."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.onnx.graph import read_preprocess

runner = CliRunner()
TINY = {"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 48, "depth": 1, "num_heads": 3}


def build(tmp_path: Path, name: str, model: dict, data: dict) -> dict:
    recipe = {"name": name, "model": model, "data": data, "export": {"parity_samples": 16},
              "evaluate": {"samples": 50, "torch": False}, "output": {"dir": str(tmp_path / "out")}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    done = runner.invoke(app, ["build", str(path), "--device", "cpu"])
    assert done.exit_code == 0, done.output[-2000:]
    return json.loads((tmp_path / "out" / f"{name}.json").read_text())


def test_a_timm_state_dict_brings_timm_mean_and_std_unless_the_recipe_sets_them(cifar10: Path, tmp_path: Path) -> None:
    import timm

    weights = tmp_path / "deit_tiny_from_timm.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", **TINY).state_dict(), weights)
    model = {"name": "deit_tiny_patch16_224", "overrides": TINY, "checkpoint": str(weights)}

    manifest = build(tmp_path, "timm_stats", model, {"dataset": "cifar10"})
    assert manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406] and manifest["preprocess"]["std"] == [0.229, 0.224, 0.225]
    crop_pct = timm.get_pretrained_cfg("deit_tiny_patch16_224").crop_pct
    assert crop_pct < 1 and manifest["preprocess"]["crop_pct"] == crop_pct  # and timm's evaluation crop
    pre, size = read_preprocess(onnx.load(str(tmp_path / "out" / "timm_stats.onnx")))
    assert pre.mean == (0.485, 0.456, 0.406) and size == 32 and pre.crop_pct == crop_pct  # the artifact carries them too

    mine = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    manifest = build(tmp_path, "my_stats", model, {"dataset": "cifar10", "preprocess": mine})
    assert manifest["preprocess"]["mean"] == [0.5, 0.5, 0.5] and manifest["preprocess"]["std"] == [0.25, 0.25, 0.25]
