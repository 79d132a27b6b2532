"""Distillation: the three losses, DeiT's token end to end, teacher checks and caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.pipeline.build import build, run_stages
from vitdeploy.recipe.schema import DistillConfig, Preprocess, TeacherSpec, load_recipe, parse_recipe
from vitdeploy.torch.models import save_weights
from vitdeploy.torch.stages.distill import make_loss, soft_loss

from .conftest import TINY_OVERRIDES, tiny_vit


def test_soft_loss_is_weighted_ce_plus_tau_squared_kl() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    cfg = DistillConfig(teacher=TeacherSpec(name="x"), mode="soft", alpha=0.3, temperature=4.0, label_smoothing=0.0)
    p_t = F.softmax(t / 4, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 4, -1))).sum(1).mean()
    expected = 0.7 * F.cross_entropy(s, y) + 0.3 * 16 * kl
    torch.testing.assert_close(soft_loss(s, t, y, cfg), expected)


def test_hard_loss_uses_the_teachers_argmax() -> None:
    s, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    t = F.one_hot(torch.tensor([5, 6, 7, 8]), 10).float() * 10
    cfg = DistillConfig(teacher=TeacherSpec(name="x"), mode="hard", label_smoothing=0.0)
    loss, _ = make_loss(cfg, lambda x, idx: t)(lambda x: s, torch.zeros(4), y, torch.arange(4))
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(s, y) + 0.5 * F.cross_entropy(s, torch.tensor([5, 6, 7, 8])))


def distill_recipe(tmp_path: Path, teacher: Path, **stage) -> dict:
    return {
        "name": "d",
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES | {"embed_dim": 24}},
        "stages": [{"stage": "distill", "teacher": {"name": "vit_tiny_patch16_224", "checkpoint": str(teacher)},
                    "epochs": 1, "train_samples": 512, "eval_samples": 100, "warmup_epochs": 0, "lr": 2e-3} | stage],
        "quantize": {"mode": "static", "calibration": {"samples": 64}},
        "evaluate": {"samples": 200},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip


def test_deit_token_distillation_builds_and_onnx_averages_both_heads(cifar10: Path, tmp_path: Path) -> None:
    save_weights(tiny_vit(), tmp_path / "teacher.safetensors")
    path = tmp_path / "d.yaml"
    path.write_text(json.dumps(distill_recipe(tmp_path, tmp_path / "teacher.safetensors", mode="token")))
    m = build(load_recipe(path), path, torch.device("cpu"))
    assert m["model"]["architecture"]["distilled"] and m["export"]["parity"]["top1_agreement"] >= 0.995
    report = m["stages"][0]["report"]
    assert report["teacher"]["name"] == "vit_tiny_patch16_224" and len(report["epochs"]) == 1
    # The exported graph's output is the mean of the class and distillation heads.
    from vitdeploy.torch.models import load_model

    student = load_model(tmp_path / "out" / "d.safetensors").eval()
    images = DataStore(cifar10).load("cifar10", "test").subset(8, seed=2)
    x = preprocess(images.images, Preprocess(), 32)
    with torch.no_grad():
        tokens = student.forward_features(torch.from_numpy(x))
        mean = (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2
    onnx_out = ort.InferenceSession(str(tmp_path / "out" / "d.fp32.onnx")).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(onnx_out, mean.numpy(), atol=1e-4)


def test_unaugmented_distillation_computes_teacher_logits_once(cifar10: Path, tmp_path: Path) -> None:
    save_weights(tiny_vit(), tmp_path / "teacher.safetensors")
    recipe = parse_recipe(distill_recipe(tmp_path, tmp_path / "teacher.safetensors", mode="soft", augment="none"))
    _, reports = run_stages(recipe, torch.device("cpu"))
    assert reports[0]["report"]["teacher_logits_cached"] is True


def test_teacher_with_other_classes_is_refused(cifar10: Path, tmp_path: Path) -> None:
    save_weights(tiny_vit(num_classes=7), tmp_path / "teacher.safetensors")
    recipe = distill_recipe(tmp_path, tmp_path / "teacher.safetensors")
    recipe["stages"][0]["teacher"]["overrides"] = TINY_OVERRIDES | {"num_classes": 7}
    with pytest.raises(UserError, match="7 classes"):
        run_stages(parse_recipe(recipe), torch.device("cpu"))
