"""Structured pruning: groups, importance scores, real removal, export with uneven heads."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.quantize import quantize_model
from vitdeploy.recipe.schema import ExportSpec, OptimizeSpec, Preprocess, PruneConfig, QuantizeSpec, parse_recipe
from vitdeploy.torch.export import check_parity, export_onnx
from vitdeploy.torch.models import build_model, count_macs, count_parameters, describe
from vitdeploy.torch.pruning import (
    IMPORTANCES,
    embed_group,
    head_dim_group,
    head_group,
    keep_per_head,
    mlp_group,
    prune_group,
    sync_attributes,
)
from vitdeploy.torch.stages.base import StageContext
from vitdeploy.torch.stages.prune import prune

from .conftest import tiny_vit


def test_removing_a_head_equals_zeroing_its_output() -> None:
    model = tiny_vit()
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.blocks[0].attn.proj.weight[:, 16:32] = 0  # head 1 of 3 (head_dim 16)
    prune_group(model, head_group(model, 0), torch.tensor([0, 2]))
    sync_attributes(model)
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[0].attn.qkv.out_features == 96
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), masked(x))


def test_removing_mlp_units_and_embedding_channels_gives_a_smaller_working_model() -> None:
    model = tiny_vit()
    before = count_parameters(model)
    prune_group(model, mlp_group(model, 1), torch.arange(0, 192, 2))
    prune_group(model, embed_group(model), torch.arange(0, 48, 2))
    sync_attributes(model)
    assert model.embed_dim == 24 and model.blocks[1].mlp.fc1.out_features == 96
    assert count_parameters(model) < 0.5 * before
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_every_importance_scores_every_structure(name: str) -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    importance = IMPORTANCES[name]()
    importance.prepare(model, x, y, 8)
    for group in (head_group(model, 0), mlp_group(model, 1), embed_group(model)):
        scores = importance(model, group)
        assert scores.shape == (group.count,) and (scores >= 0).all() and scores.sum() > 0


def test_a_dead_head_scores_lowest() -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, 32:48] = 0  # head 2 contributes nothing
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for name in ("taylor", "kl"):
        importance = IMPORTANCES[name]()
        importance.prepare(model, x, y, 8)
        assert importance(model, head_group(model, 0)).argmin() == 2, name


def prune_ctx(tmp_path: Path) -> StageContext:
    recipe = parse_recipe({"name": "p", "model": {"name": "vit_tiny_patch16_224"}, "output": {"dir": str(tmp_path)}})
    return StageContext(recipe=recipe, device=torch.device("cpu"), work_dir=tmp_path)


def test_global_ratio_removes_that_share_of_parameters(cifar10: Path, tmp_path: Path) -> None:
    model = tiny_vit(depth=3)
    ctx = prune_ctx(tmp_path)
    pruned = prune(model, ctx, PruneConfig(ratio=0.3, samples=64, round_mlp_to=4))
    report = ctx.report
    assert 0.27 <= report["parameters_removed"] <= 0.33
    assert report["after"]["macs"] < report["before"]["macs"] == count_macs(tiny_vit(depth=3), 32)
    assert count_parameters(pruned) == report["after"]["parameters"]
    assert all(h >= 1 for h in report["after"]["architecture"]["heads"])
    assert all(w % 4 == 0 for w in report["after"]["architecture"]["mlp_hidden"])


def test_per_layer_ratios_and_iterative_steps(cifar10: Path, tmp_path: Path) -> None:
    ctx = prune_ctx(tmp_path)
    model = prune(tiny_vit(), ctx, PruneConfig(head_ratio=0.34, mlp_ratio=0.5, steps=2, samples=32, importance="l1"))
    assert ctx.report["after"]["architecture"]["heads"] == [2, 2]
    assert ctx.report["after"]["architecture"]["mlp_hidden"] == [96, 96]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_uneven_heads_export_fuse_and_keep_parity(cifar10: Path, tmp_path: Path) -> None:
    model = tiny_vit(depth=3)
    for block, keep in ((0, [0]), (1, [0, 2]), (2, [0, 1, 2])):
        prune_group(model, head_group(model, block), torch.tensor(keep))
    sync_attributes(model)
    raw = export_onnx(model, ExportSpec(), 32, tmp_path / "raw.onnx")
    fused = tmp_path / "fused.onnx"
    stats = optimize_transformer(raw, fused, OptimizeSpec(), 0, 0, fuse_attention=True)
    assert stats["fused_operators"].get("Attention") == 3
    heads = sorted(
        a.i for n in onnx.load(str(fused)).graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "num_heads"
    )
    assert heads == [1, 2, 3]
    images = DataStore(cifar10).load("cifar10", "test").subset(40, seed=3)
    parity = check_parity(model, fused, images, Preprocess(), 32)
    assert parity.top1_agreement == 1.0 and parity.max_abs_logit_diff < 1e-4
    # Dynamic INT8 turns every fused Attention, whatever its head count, into QAttention.
    spec = QuantizeSpec(mode="dynamic", op_types=["MatMul", "Gemm", "Attention"])
    report = quantize_model(fused, tmp_path / "int8.onnx", spec)
    assert report["quantized_ops"].get("QAttention") == 3
    x = preprocess(images.images, Preprocess(), 32)
    int8 = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(None, {"pixel_values": x})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    assert (int8.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_narrowing_heads_keeps_each_heads_best_channels_and_its_softmax_scale() -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    attn = model.blocks[0].attn  # 3 heads of width 16
    x = torch.randn(4, 3, 32, 32)
    # Channels 8..15 of every head carry nothing: removing them must not change the output,
    # which only holds if the q·k scale of width 16 survives the cut to width 8.
    with torch.no_grad():
        for h in range(3):
            dead = slice(h * 16 + 8, h * 16 + 16)
            for k in range(3):
                attn.qkv.weight[k * 48 :][dead] = 0
                attn.qkv.bias[k * 48 :][dead] = 0
            attn.proj.weight[:, dead] = 0
    reference = model(x)
    scores = IMPORTANCES["l1"]()(model, head_dim_group(model, 0))
    keep = keep_per_head(scores, 3, 8)
    assert keep.tolist() == [c + 16 * h for h in range(3) for c in range(8)]
    prune_group(model, head_dim_group(model, 0), keep)
    sync_attributes(model)
    assert (attn.num_heads, attn.head_dim, attn.qkv.out_features, attn.proj.in_features) == (3, 8, 72, 24)
    torch.testing.assert_close(model(x), reference)


def test_head_dim_ratio_rebuilds_from_its_architecture(cifar10: Path, tmp_path: Path) -> None:
    ctx = prune_ctx(tmp_path)
    model = prune(tiny_vit(), ctx, PruneConfig(head_ratio=0.34, head_dim_ratio=0.5, samples=32))
    assert [b.attn.head_dim for b in model.blocks] == [8, 8]
    rebuilt = build_model(describe(model))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_removing_blocks_deletes_the_least_missed_and_rebuilds(cifar10: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_vit(depth=3)
    with torch.no_grad():  # block 1 adds nothing to the residual stream: deleting it costs nothing
        for name in ("attn.proj", "mlp.fc2"):
            layer = model.blocks[1].get_submodule(name)
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    reference = model.eval()(x)
    ctx = prune_ctx(tmp_path)
    pruned = prune(model, ctx, PruneConfig(remove_blocks=1, samples=16))
    assert ctx.report["blocks_removed"] == [1] and len(pruned.blocks) == 2
    torch.testing.assert_close(pruned(x), reference)
    rebuilt = build_model(describe(pruned))
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), reference)
    with pytest.raises(UserError, match="all 2 blocks"):
        prune(pruned, ctx, PruneConfig(remove_blocks=2, samples=16))
