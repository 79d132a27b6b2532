"""Nyström attention: exactness limits, batch independence, ONNX export and ONNX Runtime INT8."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.pipeline.build import build
from vitdeploy.recipe.schema import ExportSpec, Preprocess, load_recipe
from vitdeploy.torch.export import check_parity, export_onnx
from vitdeploy.torch.nystrom import NystromAttention, iterative_pinv, segment_mean_matrix

from .conftest import TINY_OVERRIDES, tiny_vit


def nystrom_vit(landmarks: int, **kw) -> torch.nn.Module:
    model = tiny_vit()
    for blk in model.blocks:
        blk.attn = NystromAttention(blk.attn, landmarks, num_tokens=17, **kw)
    return model.eval()


def test_uneven_segments_cover_every_token_once() -> None:
    m = segment_mean_matrix(65, 24)
    assert m.shape == (24, 65)
    torch.testing.assert_close(m.sum(1), torch.ones(24))
    assert ((m > 0).sum(0) == 1).all()  # each token in exactly one segment
    sizes = (m > 0).sum(1)
    assert set(sizes.tolist()) == {2, 3}


def test_iterative_pinv_matches_the_pseudo_inverse() -> None:
    a = torch.softmax(torch.randn(4, 3, 16, 16), dim=-1).double()
    torch.testing.assert_close(iterative_pinv(a, 20), torch.linalg.pinv(a), atol=1e-5, rtol=1e-4)


def test_as_many_landmarks_as_tokens_is_exact_attention() -> None:
    torch.manual_seed(0)
    exact = tiny_vit()
    approx = copy.deepcopy(exact)
    for blk in approx.blocks:
        blk.attn = NystromAttention(blk.attn, 17, num_tokens=17, pinv_iterations=20)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(approx(x), exact(x), atol=1e-4, rtol=1e-4)


def test_a_sample_does_not_depend_on_its_batch_mates(cifar10: Path) -> None:
    torch.manual_seed(0)
    model = nystrom_vit(5, conv_kernel=3)
    images = DataStore(cifar10).load("cifar10", "test").subset(32, seed=0)
    x = torch.from_numpy(preprocess(images.images, Preprocess(), 32))
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(32)])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


def test_exports_with_standard_ops_and_keeps_parity(cifar10: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nystrom_vit(6)
    path = export_onnx(model, ExportSpec(), 32, tmp_path / "n.onnx")
    nodes = onnx.load(str(path)).graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes)  # standard operators only
    assert sum(n.op_type == "MatMul" for n in nodes) > 2 * 6 * 3  # the pseudo-inverse is MatMuls
    images = DataStore(cifar10).load("cifar10", "test").subset(64, seed=1)
    parity = check_parity(model, path, images, Preprocess(), 32)
    assert parity.top1_agreement == 1.0 and parity.max_abs_logit_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = preprocess(images.images[:5], Preprocess(), 32)
    one_by_one = np.concatenate([session.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(one_by_one, session.run(None, {"pixel_values": x})[0], atol=1e-5)


def test_nystrom_recipe_builds_to_static_int8(cifar10: Path, tmp_path: Path) -> None:
    recipe = {
        "name": "nys",
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES},
        "stages": [{"stage": "nystrom", "landmarks": 8, "conv_kernel": 3},
                   {"stage": "finetune", "epochs": 1, "train_samples": 512, "eval_samples": 100, "warmup_epochs": 0}],
        "quantize": {"mode": "static", "calibration": {"samples": 64}},
        "evaluate": {"samples": 300},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    path = tmp_path / "nys.yaml"
    path.write_text(json.dumps(recipe))
    m = build(load_recipe(path), path, torch.device("cpu"))
    assert m["export"]["parity"]["top1_agreement"] >= 0.995
    assert m["model"]["architecture"]["attention"] == ["nystrom", "nystrom"]
    assert "Attention" not in m["optimize"]["fused_operators"]
    top1 = m["evaluate"]["top1"]
    assert abs(top1["onnx_fp32"] - top1["onnx_int8"]) <= 0.03
    assert m["quantize"]["quantized_ops"].get("DequantizeLinear", 0) > 0
