"""Models: ViT-only creation, safe weight loading, the q/k/v split used for export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vitdeploy.core.errors import UserError
from vitdeploy.recipe.schema import ModelSpec
from vitdeploy.torch.models import SplitQKVAttention, create_model, load_weights, read_state_dict, save_weights, split_qkv

from .conftest import TINY_OVERRIDES as TINY
from .conftest import tiny_vit as tiny


def test_overrides_reach_the_model() -> None:
    m = tiny()
    assert m.embed_dim == 48 and len(m.blocks) == 2 and m.head.out_features == 10
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_deit_distilled_model_is_accepted() -> None:
    m = create_model(ModelSpec(name="deit_tiny_distilled_patch16_224", overrides=TINY))
    assert m.num_prefix_tokens == 2  # class + distillation token


def test_non_vit_model_is_refused() -> None:
    with pytest.raises(UserError, match="not of the VisionTransformer family"):
        create_model(ModelSpec(name="resnet18"))


def test_split_qkv_is_numerically_identical() -> None:
    m = tiny()
    x = torch.randn(4, 3, 32, 32)
    split = split_qkv(copy.deepcopy(m))
    assert sum(isinstance(mod, SplitQKVAttention) for mod in split.modules()) == 2
    torch.testing.assert_close(split(x), m(x), rtol=1e-5, atol=1e-5)


def test_safetensors_round_trip_in_fp16(tmp_path: Path) -> None:
    m = tiny()
    save_weights(m, tmp_path / "w.safetensors", half=True)
    other = tiny()
    load_weights(other, tmp_path / "w.safetensors")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other(x), m(x), rtol=1e-2, atol=1e-2)


def test_torch_state_dict_loads_with_weights_only(tmp_path: Path) -> None:
    m = tiny()
    torch.save({"model": m.state_dict()}, tmp_path / "w.pt")
    assert set(read_state_dict(tmp_path / "w.pt")) == set(m.state_dict())


class Payload:
    """Unpickling this would run code chosen by whoever wrote the file."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load"):
        read_state_dict(tmp_path / "evil.pt")


def test_checkpoint_that_does_not_fit_is_explained(tmp_path: Path) -> None:
    save_weights(tiny(embed_dim=96), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match="shape mismatches"):
        load_weights(tiny(), tmp_path / "w.safetensors")
