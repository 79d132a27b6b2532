"""Self-describing checkpoints: every compressed model rebuilds exactly from its file."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitdeploy.core.architecture import read_architecture
from vitdeploy.core.errors import UserError
from vitdeploy.recipe.schema import ModelSpec
from vitdeploy.torch.models import add_distillation_token, create_model, describe, load_model, save_weights
from vitdeploy.torch.nystrom import NystromAttention
from vitdeploy.torch.pruning import head_group, mlp_group, prune_group, sync_attributes

from .conftest import TINY_OVERRIDES, tiny_vit


def compressed_model() -> torch.nn.Module:
    """Pruned unevenly, Nyström in one block, with a distillation token: every kind of change."""
    torch.manual_seed(0)
    model = add_distillation_token(tiny_vit())
    prune_group(model, head_group(model, 0), torch.tensor([0, 2]))
    prune_group(model, mlp_group(model, 1), torch.arange(0, 96))
    sync_attributes(model)
    model.blocks[1].attn = NystromAttention(model.blocks[1].attn, landmarks=7, num_tokens=18, conv_kernel=3)
    return model.eval()


def test_compressed_model_rebuilds_exactly_from_its_file(tmp_path: Path) -> None:
    model = compressed_model()
    save_weights(model, tmp_path / "m.safetensors")
    arch = read_architecture(tmp_path / "m.safetensors")
    assert arch == describe(model)
    assert [b.num_heads for b in arch.blocks] == [2, 3] and [b.mlp_hidden for b in arch.blocks] == [192, 96]
    assert arch.distilled and arch.blocks[1].attention == {
        "kind": "nystrom",
        "landmarks": 7,
        "pinv_iterations": 6,
        "conv_kernel": 3,
    }
    rebuilt = load_model(tmp_path / "m.safetensors").eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_recipe_checkpoint_rebuilds_the_stored_architecture(tmp_path: Path) -> None:
    model = compressed_model()
    save_weights(model, tmp_path / "m.safetensors")
    spec = ModelSpec(name="vit_tiny_patch16_224", overrides=TINY_OVERRIDES, checkpoint=tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(create_model(spec).eval()(x), model(x))


def test_a_checkpoint_without_overrides_in_the_recipe_brings_its_own(tmp_path: Path) -> None:
    model = compressed_model()
    save_weights(model, tmp_path / "m.safetensors")
    spec = ModelSpec(name="vit_tiny_patch16_224", checkpoint=tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(create_model(spec).eval()(x), model(x))


def test_checkpoint_of_another_model_is_explained(tmp_path: Path) -> None:
    save_weights(tiny_vit(), tmp_path / "m.safetensors")
    spec = ModelSpec(name="vit_small_patch16_224", overrides=TINY_OVERRIDES, checkpoint=tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="holds a vit_tiny_patch16_224"):
        create_model(spec)


def test_distillation_token_starts_from_the_class_token() -> None:
    model = tiny_vit()
    distilled = add_distillation_token(copy.deepcopy(model))
    assert distilled.num_prefix_tokens == 2 and distilled.pos_embed.shape[1] == model.pos_embed.shape[1] + 1
    torch.testing.assert_close(distilled.dist_token, model.cls_token)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert (distilled(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.75


def test_architecture_is_read_without_torch(tmp_path: Path) -> None:
    save_weights(compressed_model(), tmp_path / "m.safetensors")
    code = (
        "import sys; from vitdeploy.core.architecture import read_architecture; "
        f"a = read_architecture({str(tmp_path / 'm.safetensors')!r}); "
        "assert a.distilled; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
