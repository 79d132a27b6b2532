"""timm VisionTransformer-family models: creation, safe weight loading, export-friendly rewrites."""

from __future__ import annotations

import contextlib
import copy
import difflib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers.attention import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitdeploy.core.architecture import METADATA_KEY, Architecture, BlockArch, read_architecture
from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import atomic_path
from vitdeploy.recipe.schema import ModelSpec, Preprocess, Recipe
from vitdeploy.torch.registry import attention_builder

# timm modules whose models are VisionTransformer instances (DeiT adds a distillation token).
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def vit_model_names() -> list[str]:
    names = []
    for name in timm.list_models():
        fn = timm.models.model_entrypoint(name)
        if fn.__module__ in VIT_MODULES:
            names.append(name)
    return names


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def pretrained_source(name: str) -> dict[str, str]:
    """Where timm should read `name`'s pretrained weights: the Hugging Face cache's file when it
    is there (no network at all: the hub client would otherwise ask the hub first and, offline,
    retry for about a minute), else the hub; a one-line UserError at once when neither can be had."""
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return {}  # weights from a URL: timm's own download and cache
    for filename in WEIGHT_FILES:
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str):
            return {"file": cached, "source": ""}
    if constants.HF_HUB_OFFLINE or not resolvable(constants.ENDPOINT):
        raise UserError(
            f"model.pretrained: {hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
            f"cannot be reached; download it once where it can (timm.create_model('{name}', pretrained=True)) and "
            "copy that cache here, or give the weights as model.checkpoint"
        )
    return {}


def resolvable(url: str) -> bool:
    """Whether the hub's host name resolves: offline, it fails at once."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(url).hostname or "", 443)
    except OSError:
        return False
    return True


def with_weights_preprocess(recipe: Recipe) -> Recipe:
    """The recipe with its weights' input contract when they come from timm (`pretrained`, or a
    plain timm/Hugging Face state dict) and the recipe sets no `data.preprocess`: timm's
    pretrained_cfg mean, std and interpolation. The defaults are CIFAR-10's statistics; feeding
    a model other statistics than it was trained with is the usual cause of a ViT losing points
    after export."""
    spec = recipe.model
    from_timm = spec.pretrained or (spec.checkpoint is not None and read_architecture(spec.checkpoint) is None)
    cfg = timm.get_pretrained_cfg(spec.name) if from_timm else None
    if cfg is None or "preprocess" in recipe.data.model_fields_set:
        return recipe
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    crop_pct = cfg.crop_pct if cfg.crop_mode == "center" and 0.5 < (cfg.crop_pct or 1.0) <= 1 else 1.0
    pre = Preprocess(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=interpolation, crop_pct=crop_pct)
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"preprocess": pre})})


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
    """A timm ViT with the recipe's overrides and weights (pretrained or checkpoint).

    A checkpoint written by vitdeploy carries its architecture (pruned widths, Nyström
    attention, distillation token); the model is rebuilt from that, so it loads exactly.
    """
    validate_model_name(spec.name)
    overrides = spec.overrides.model_dump(exclude_none=True)
    # Transfer: the weights keep their own head and grid until they are loaded; then `transfer`
    # gives the model the recipe's.
    target = {k: overrides.pop(k) for k in TRANSFERRED if k in overrides} if spec.reset_head else {}
    stored = read_architecture(spec.checkpoint) if spec.checkpoint is not None else None
    if stored is not None:
        if not _shape_overrides(overrides) or target:  # none given (or a transfer): the checkpoint says what it is
            overrides = dict(stored.overrides) | overrides
        if stored.timm_name != spec.name or _shape_overrides(stored.overrides) != _shape_overrides(overrides):
            raise UserError(
                f"model.checkpoint {spec.checkpoint} holds a {stored.timm_name} {stored.overrides}, but the recipe "
                f"asks for {spec.name} {overrides}; make model.name and model.overrides match the checkpoint"
            )
        model = build_model(replace_overrides(stored, overrides))
    else:
        # exportable=True keeps timm off code paths that trace badly (e.g. fused SDPA).
        with seeded_init():
            # timm's own loader resets the head and resamples the grid of pretrained weights
            first = overrides | (target if spec.pretrained else {})
            if spec.pretrained:
                first["pretrained_cfg_overlay"] = pretrained_source(spec.name)
            model = timm.create_model(spec.name, pretrained=spec.pretrained, exportable=True, **first)
        if not isinstance(model, VisionTransformer):
            raise UserError(f"model.name: '{spec.name}' did not build a VisionTransformer")
        model.vitdeploy_source = {"timm_name": spec.name, "overrides": overrides}
    _disable_fused_attention(model)
    if spec.checkpoint is not None:
        load_weights(model, spec.checkpoint, for_transfer=spec.reset_head)
    if spec.reset_head:
        transfer(model, **target)
    return model


# Overrides a transfer may change: the classifier's size and the input grid.
TRANSFERRED = ("num_classes", "img_size")


def transfer(model: VisionTransformer, num_classes: int, img_size: int | None = None) -> None:
    """Give a model with loaded weights a fresh `num_classes` head (and distillation head) and,
    when `img_size` differs, position embeddings resampled to the new patch grid. What changed is
    recorded on the model (`vitdeploy_transfer`) for the manifest."""
    source = model.vitdeploy_source
    before = {"num_classes": model.num_classes, "img_size": model.patch_embed.img_size[0]}
    record: dict[str, Any] = {"from": before, "reset": []}
    with seeded_init(1):  # always fresh: the same count of other classes is a new head too
        model.reset_classifier(num_classes)
    record["reset"] = ["head", "head_dist"] if isinstance(model, VisionTransformerDistilled) else ["head"]
    if img_size is not None and img_size != before["img_size"]:
        if any(getattr(b.attn, "attention_spec", None) for b in model.blocks):
            raise UserError("model.overrides.img_size: a model with Nyström attention keeps its token count; drop img_size")
        model.set_input_size(img_size=(img_size, img_size))
        record["resampled"] = {"pos_embed": [before["img_size"], img_size]}
    source["overrides"] = dict(source["overrides"]) | {"num_classes": num_classes, "img_size": model.patch_embed.img_size[0]}
    record["to"] = {"num_classes": num_classes, "img_size": model.patch_embed.img_size[0]}
    model.vitdeploy_transfer = record


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Random initialisation from a fixed seed, leaving the global RNG as it was.

    torch seeds itself randomly per process: without this, two builds of the same recipe
    (or two processes of one distributed build) would start from different weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# Overrides that only change training behaviour; a checkpoint may be fine-tuned with others.
_TRAINING_ONLY = ("drop_path_rate",)


def _shape_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k not in _TRAINING_ONLY}


def replace_overrides(arch: Architecture, overrides: dict[str, Any]) -> Architecture:
    """`arch` with the recipe's training-only overrides (drop path) applied."""
    extra = {k: v for k, v in overrides.items() if k in _TRAINING_ONLY}
    return Architecture(arch.timm_name, arch.overrides | extra, arch.embed_dim, arch.blocks, arch.distilled)


# ---------------------------------------------------------------- architecture <-> model


def num_tokens(model: VisionTransformer) -> int:
    return model.patch_embed.num_patches + model.num_prefix_tokens


def describe(model: VisionTransformer) -> Architecture:
    """The architecture of a (possibly pruned, distilled or Nyström) model built by vitdeploy."""
    source = getattr(model, "vitdeploy_source", None)
    if source is None:
        raise ValueError("model was not created by vitdeploy.torch.models (no vitdeploy_source)")
    blocks = []
    for blk in model.blocks:
        attn = blk.attn
        spec = getattr(attn, "attention_spec", None)
        blocks.append(
            BlockArch(
                num_heads=attn.num_heads,
                head_dim=attn.head_dim,
                mlp_hidden=blk.mlp.fc1.out_features,
                attention=dict(spec) if spec else {"kind": "exact"},
            )
        )
    distilled = isinstance(model, VisionTransformerDistilled)
    return Architecture(source["timm_name"], dict(source["overrides"]), model.embed_dim, tuple(blocks), distilled)


def build_model(arch: Architecture) -> VisionTransformer:
    """A randomly initialised model of exactly this architecture."""
    validate_model_name(arch.timm_name)
    first = arch.blocks[0].num_heads
    # timm asserts embed_dim % num_heads == 0 while building; every block is resized below anyway.
    heads = first if arch.embed_dim % first == 0 else 1
    kwargs = arch.overrides | {"embed_dim": arch.embed_dim, "depth": len(arch.blocks), "num_heads": heads}
    with seeded_init():
        model = timm.create_model(arch.timm_name, pretrained=False, exportable=True, **kwargs)
    model.vitdeploy_source = {"timm_name": arch.timm_name, "overrides": dict(arch.overrides)}
    if arch.distilled and not isinstance(model, VisionTransformerDistilled):
        model = add_distillation_token(model)
    for blk, spec in zip(model.blocks, arch.blocks, strict=True):
        resize_block(blk, spec)
        kind = spec.attention.get("kind", "exact")
        if kind != "exact":
            params = {k: v for k, v in spec.attention.items() if k != "kind"}
            blk.attn = attention_builder(kind)(blk.attn, params, num_tokens(model))
    _disable_fused_attention(model)
    return model


def resized_linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None)


def resize_block(blk: nn.Module, spec: BlockArch) -> None:
    """Give a block `spec`'s head count, head width and MLP width (new, uninitialised Linears)."""
    attn, mlp = blk.attn, blk.mlp
    if (attn.num_heads, attn.head_dim) != (spec.num_heads, spec.head_dim):
        dim, dim_out = attn.qkv.in_features, attn.proj.out_features
        attn.qkv = resized_linear(attn.qkv, dim, 3 * spec.attn_dim)
        attn.proj = resized_linear(attn.proj, spec.attn_dim, dim_out)
        set_heads(attn, spec.num_heads, spec.head_dim)
    if mlp.fc1.out_features != spec.mlp_hidden:
        mlp.fc1 = resized_linear(mlp.fc1, mlp.fc1.in_features, spec.mlp_hidden)
        mlp.fc2 = resized_linear(mlp.fc2, spec.mlp_hidden, mlp.fc2.out_features)


def set_heads(attn: nn.Module, num_heads: int, head_dim: int) -> None:
    """Keep timm's bookkeeping in step with the weights: the scale and attn_dim too."""
    attn.num_heads, attn.head_dim, attn.attn_dim = num_heads, head_dim, num_heads * head_dim
    attn.scale = head_dim**-0.5


def add_distillation_token(model: VisionTransformer) -> VisionTransformerDistilled:
    """Turn a plain ViT into DeiT's distilled form, starting from its own weights.

    The distillation token starts as a copy of the class token (with its position embedding)
    and the distillation head as a copy of the head. The outputs are close to the old model's,
    not equal: every query now sees the class key twice, which shifts its softmax weights a
    little. timm's VisionTransformerDistilled adds only these members to VisionTransformer, so
    the model is converted in place.
    """
    if isinstance(model, VisionTransformerDistilled):
        return model
    if model.global_pool != "token" or model.cls_token is None or model.no_embed_class:
        raise UserError("a distillation token needs a class-token ViT (global_pool: token, class_token: true)")
    pos = model.pos_embed.data
    model.__class__ = VisionTransformerDistilled
    model.num_prefix_tokens = 2
    model.dist_token = nn.Parameter(model.cls_token.data.clone())
    model.pos_embed = nn.Parameter(torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1))
    model.head_dist = copy.deepcopy(model.head)
    model.distilled_training = False
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
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises SafetensorError for truncated or corrupt files
            raise UserError(f"{path}: not a readable safetensors file; truncated or corrupt ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = [line.strip() for line in str(err).splitlines() if line.strip().startswith("Unsupported")]
        why = f" ({named[0].rstrip(':')})" if named else ""
        raise UserError(
            f"{path}: refused to load: not a plain tensor checkpoint{why}; pickled objects can run code. "
            "Convert it to safetensors."
        ) from None
    except Exception as err:  # torch raises RuntimeError for files that are not checkpoints
        raise UserError(f"{path}: not a readable torch checkpoint ({err})") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path, for_transfer: bool = False) -> None:
    """The checkpoint's tensors into `model`, which must fit them exactly. `for_transfer`: a plain
    state dict's classifier is left out (the head is reset next) and its position embeddings are
    resampled to the model's grid."""
    state = read_state_dict(path)
    reference = model.state_dict()
    if for_transfer and read_architecture(path) is None:
        state = fit_for_transfer(state, reference, model)
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


def fit_for_transfer(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], model: nn.Module) -> dict:
    from timm.layers import resample_abs_pos_embed

    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
    state |= {k: reference[k] for k in reference if k.startswith(("head.", "head_dist."))}
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != reference["pos_embed"].shape:
        grid = model.patch_embed.grid_size
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=prefix)
    return state


def save_weights(model: nn.Module, path: Path, half: bool = False, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written atomically, with the model's architecture in the metadata.

    `half` stores floating tensors as fp16.
    """
    metadata = dict(metadata or {})
    if getattr(model, "vitdeploy_source", None) is not None:
        metadata[METADATA_KEY] = describe(model).to_json()
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=metadata or None)


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
    """Replace every timm Attention in place by SplitQKVAttention; returns the model.

    Exact type match: a subclass or another attention kind (Nyström) keeps its own forward.
    """
    for name, child in list(model.named_children()):
        if type(child) is Attention:
            setattr(model, name, SplitQKVAttention(child))
        else:
            split_qkv(child)
    return model


def count_macs(model: nn.Module, img_size: int) -> int:
    """Multiply-accumulates of one image's forward pass (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def load_model(path: Path) -> VisionTransformer:
    """Rebuild a model saved by `save_weights` (architecture from its metadata) with its weights."""
    arch = read_architecture(path)
    if arch is None:
        raise UserError(f"{path}: no vitdeploy architecture in its metadata; give model.name and overrides instead")
    model = build_model(arch)
    load_weights(model, path)
    return model
