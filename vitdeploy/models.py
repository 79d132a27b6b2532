"""timm VisionTransformer-family models: creation, safe weight loading, export-friendly rewrites."""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitdeploy.errors import UserError
from vitdeploy.recipe import ModelSpec
from vitdeploy.storage import atomic_path

# timm modules whose models are VisionTransformer instances (DeiT adds a distillation token).
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def vit_model_names() -> list[str]:
    names = []
    for name in timm.list_models():
        fn = timm.models.model_entrypoint(name)
        if fn.__module__ in VIT_MODULES:
            names.append(name)
    return names


def validate_model_name(name: str) -> None:
    """Raise a UserError naming close ViT alternatives if `name` is not a timm ViT."""
    if timm.models.is_model(name) and timm.models.model_entrypoint(name).__module__ in VIT_MODULES:
        return
    names = vit_model_names()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    what = "is a timm model but not of the VisionTransformer family" if timm.models.is_model(name) else "is not a timm model"
    hint = f"; did you mean: {', '.join(close)}" if close else "; e.g. vit_tiny_patch16_224, deit_small_patch16_224"
    raise UserError(f"model.name: '{name}' {what}{hint} ({len(names)} ViT models are allowed)")


def create_model(spec: ModelSpec) -> VisionTransformer:
    """A timm ViT with the recipe's overrides and weights (pretrained or checkpoint)."""
    validate_model_name(spec.name)
    overrides = spec.overrides.model_dump(exclude_none=True)
    # exportable=True keeps timm off code paths that trace badly (e.g. fused SDPA).
    model = timm.create_model(spec.name, pretrained=spec.pretrained, exportable=True, **overrides)
    if not isinstance(model, VisionTransformer):
        raise UserError(f"model.name: '{spec.name}' did not build a VisionTransformer")
    _disable_fused_attention(model)
    if spec.checkpoint is not None:
        load_weights(model, spec.checkpoint)
    return model


def _disable_fused_attention(model: nn.Module) -> None:
    # The explicit softmax(q k^T) v path exports to plain MatMul/Softmax that ORT can fuse.
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from safetensors, or from a torch file loaded with weights_only=True.

    Arbitrary pickles can run code on load, so anything but plain tensors is refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path}: refused to load: the file is not a plain tensor checkpoint "
            f"(weights_only=True rejected it: {str(err).splitlines()[0]}). Convert it to safetensors."
        ) from None
    except Exception as err:  # torch raises RuntimeError for files that are not checkpoints
        raise UserError(f"{path}: not a readable torch checkpoint ({err})") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    reference = model.state_dict()
    mismatched = [k for k, v in state.items() if k in reference and reference[k].shape != v.shape]
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(reference[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise UserError(f"model.checkpoint {path} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})


def save_weights(model: nn.Module, path: Path, half: bool = False, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written atomically; `half` stores floating tensors as fp16."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- export-friendly attention


class SplitQKVAttention(nn.Module):
    """timm's Attention with separate q, k and v Linears and explicit softmax attention.

    timm packs q/k/v into one Linear; ONNX Runtime's attention fusion looks for three
    separate MatMuls, so a packed export fuses no Attention. Numerically identical.
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        if attn.gate is not None or not isinstance(attn.norm, nn.Identity):
            raise UserError("split_qkv supports plain timm Attention (no gate, no scale_norm)")
        self.num_heads, self.head_dim, self.inv_scale = attn.num_heads, attn.head_dim, 1.0 / attn.scale
        dim, width = attn.qkv.in_features, attn.attn_dim
        bias = attn.qkv.bias is not None
        self.q, self.k, self.v = (nn.Linear(dim, width, bias=bias) for _ in range(3))
        for i, lin in enumerate((self.q, self.k, self.v)):
            lin.weight.data.copy_(attn.qkv.weight.data[i * width : (i + 1) * width])
            if bias:
                lin.bias.data.copy_(attn.qkv.bias.data[i * width : (i + 1) * width])
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.attn_drop, self.proj, self.proj_drop = attn.attn_drop, attn.proj, attn.proj_drop

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if is_causal:
            raise NotImplementedError("ViT attention is not causal")
        b, n, _ = x.shape
        q = self.q_norm(self._heads(self.q(x)))
        k = self.k_norm(self._heads(self.k(x)))
        v = self._heads(self.v(x))
        # Divide after q k^T: ORT's mask-free attention fusion matches MatMul -> Div -> Softmax.
        attn = (q @ k.transpose(-2, -1)) / self.inv_scale
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = self.attn_drop(F.softmax(attn, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(out))


def split_qkv(model: nn.Module) -> nn.Module:
    """Replace every timm Attention in place by SplitQKVAttention; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, Attention):
            setattr(model, name, SplitQKVAttention(child))
        else:
            split_qkv(child)
    return model
