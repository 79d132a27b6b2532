"""Structured pruning of timm ViTs: an explicit dependency graph, scored groups, real removal.

The dependency graph is written out, not traced: in a ViT each removable structure touches a
known set of tensors.
- a head of block i: its rows of q, k and v in `attn.qkv` (three strided slices) and its
  columns of `attn.proj`;
- one channel of one head of block i (its width): that row of q, k and v and that column of
  `attn.proj`; every head of a block keeps the same width, so channels are chosen per head;
- an MLP hidden unit of block i: a row (and bias) of `mlp.fc1`, a column of `mlp.fc2`;
- a whole block: its residual branch is skipped (the block is deleted);
- an embedding channel: that channel of every tensor on the residual stream (patch
  embedding, tokens, position embedding, every norm, every projection in and out, the heads).

A `Group` lists those tensor slices (`Member`s) for one kind of structure in one place.
Importance scores are small registered callables that turn a group into one score per
structure (first-order Taylor, L1 magnitude, KL divergence of the output when the structure
is removed). `prune_group` then keeps the chosen structures by slicing every member, and
`sync_attributes` brings the modules' bookkeeping (in/out features, head counts, scale,
embed_dim) in line with the tensors: the result is a real, smaller model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitdeploy.torch.models import set_heads


@dataclass(frozen=True)
class Member:
    """A tensor slice that belongs to structure i: indices offset + i*width … + width along `dim`."""

    param: str
    dim: int
    width: int = 1
    offset: int = 0

    def indices(self, structures: torch.Tensor) -> torch.Tensor:
        base = self.offset + structures[:, None] * self.width
        return (base + torch.arange(self.width)).flatten()


@dataclass(frozen=True)
class Group:
    kind: str  # "heads", "head_dims", "mlp" or "embed"
    block: int | None
    count: int
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        return self.kind if self.block is None else f"blocks.{self.block}.{self.kind}"


def head_group(model: VisionTransformer, i: int) -> Group:
    attn = model.blocks[i].attn
    hd, width = attn.head_dim, attn.attn_dim
    p = f"blocks.{i}.attn"
    members = [Member(f"{p}.qkv.weight", 0, hd, k * width) for k in range(3)]
    if attn.qkv.bias is not None:
        members += [Member(f"{p}.qkv.bias", 0, hd, k * width) for k in range(3)]
    members.append(Member(f"{p}.proj.weight", 1, hd))
    return Group("heads", i, attn.num_heads, tuple(members))


def head_dim_group(model: VisionTransformer, i: int) -> Group:
    """Structure s is channel s % head_dim of head s // head_dim: one row of q, k, v, one proj column."""
    attn = model.blocks[i].attn
    width = attn.attn_dim
    p = f"blocks.{i}.attn"
    members = [Member(f"{p}.qkv.weight", 0, 1, k * width) for k in range(3)]
    if attn.qkv.bias is not None:
        members += [Member(f"{p}.qkv.bias", 0, 1, k * width) for k in range(3)]
    members.append(Member(f"{p}.proj.weight", 1))
    return Group("head_dims", i, width, tuple(members))


def keep_per_head(scores: torch.Tensor, num_heads: int, keep: int) -> torch.Tensor:
    """Channel indices to keep: the `keep` highest-scoring channels of every head."""
    per_head = scores.view(num_heads, -1)
    top = per_head.topk(keep, dim=1).indices.sort(dim=1).values
    return (top + torch.arange(num_heads)[:, None] * per_head.shape[1]).flatten()


def mlp_group(model: VisionTransformer, i: int) -> Group:
    p = f"blocks.{i}.mlp"
    mlp = model.blocks[i].mlp
    members = [Member(f"{p}.fc1.weight", 0), Member(f"{p}.fc2.weight", 1)]
    if mlp.fc1.bias is not None:
        members.append(Member(f"{p}.fc1.bias", 0))
    return Group("mlp", i, mlp.fc1.out_features, tuple(members))


def _embed_axis(name: str) -> int | None:
    """The axis along which parameter `name` has one entry per embedding channel, if any."""
    if name in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        return 2
    if name.startswith("patch_embed.proj."):
        return 0
    parts = name.split(".")
    module, leaf = (parts[-2], parts[-1]) if len(parts) > 1 else ("", name)
    parent = parts[-3] if len(parts) > 2 else ""
    if module in ("norm", "norm1", "norm2", "fc_norm", "norm_pre", "ls1", "ls2"):
        return 0
    if leaf == "weight" and (module in ("qkv", "fc1") or (module in ("head", "head_dist") and len(parts) == 2)):
        return 1
    if (module, parent) in (("proj", "attn"), ("fc2", "mlp")):
        return 0
    return None


def embed_group(model: VisionTransformer) -> Group:
    """Every tensor whose size follows embed_dim, and the axis it lies on."""
    members = []
    for name, _ in model.named_parameters():
        axis = _embed_axis(name)
        if axis is not None:
            members.append(Member(name, axis))
    return Group("embed", None, model.embed_dim, tuple(members))


def structure_cost(model: nn.Module, group: Group) -> int:
    """Parameters one structure of the group holds."""
    params = dict(model.named_parameters())
    return sum(m.width * params[m.param].numel() // params[m.param].shape[m.dim] for m in group.members)


# ---------------------------------------------------------------- importance


class Importance:
    """Scores every structure of a group; higher means more important."""

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        """Look at data once before scoring (gradients, reference outputs); default: nothing."""

    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor:
        raise NotImplementedError


IMPORTANCES: dict[str, Callable[[], Importance]] = {}


def register_importance(name: str) -> Callable[[type[Importance]], type[Importance]]:
    def decorator(cls: type[Importance]) -> type[Importance]:
        IMPORTANCES[name] = cls
        return cls

    return decorator


def reduce_to_structures(values: dict[str, torch.Tensor], group: Group) -> torch.Tensor:
    """Sum per-element `values` (keyed like the parameters) over each structure's slices."""
    scores = torch.zeros(group.count)
    every = torch.arange(group.count)
    for m in group.members:
        v = values[m.param]
        per_index = v.transpose(0, m.dim).reshape(v.shape[m.dim], -1).sum(1)
        scores += per_index[m.indices(every)].view(group.count, m.width).sum(1)
    return scores


@register_importance("l1")
class L1Importance(Importance):
    """Magnitude: the sum of |w| over the structure's weights."""

    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor:
        params = dict(model.named_parameters())
        return reduce_to_structures({m.param: params[m.param].detach().abs().cpu() for m in group.members}, group)


@register_importance("taylor")
class TaylorImportance(Importance):
    """First-order Taylor: |Σ w·∂L/∂w| over the structure, the loss change its removal predicts."""

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        model.zero_grad(set_to_none=True)
        model.eval()  # no dropout; the gradient of the deployed function
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            loss = F.cross_entropy(model(x), y, reduction="sum") / len(images)
            loss.backward()

    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor:
        params = dict(model.named_parameters())
        values = {m.param: (params[m.param].detach() * params[m.param].grad).cpu() for m in group.members}
        return reduce_to_structures(values, group).abs()


@register_importance("kl")
class KLImportance(Importance):
    """KL(p_model ‖ p_without_structure) on a data sample: each structure zeroed in turn.

    Exact but costly: one forward pass over the sample per structure.
    """

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size
        self.reference = self._log_probs(model.eval())

    def _log_probs(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([F.log_softmax(model(x), -1) for x in self.images.split(self.batch_size)])

    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor:
        params = dict(model.named_parameters())
        scores = torch.zeros(group.count)
        for s in range(group.count):
            saved = []
            with torch.no_grad():
                for m in group.members:
                    idx = m.indices(torch.tensor([s]))
                    p = params[m.param]
                    saved.append((p, idx, p.index_select(m.dim, idx).clone(), m.dim))
                    p.index_fill_(m.dim, idx, 0.0)
            log_q = self._log_probs(model)
            scores[s] = F.kl_div(log_q, self.reference, reduction="batchmean", log_target=True)
            with torch.no_grad():
                for p, idx, values, dim in saved:
                    p.index_copy_(dim, idx, values)
        return scores


# ---------------------------------------------------------------- removal


def prune_group(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    """Keep only structures `keep` (indices) of `group`: slices every member tensor in place."""
    keep = keep.sort().values.cpu()
    params = dict(model.named_parameters())
    # A tensor may hold several members (q, k and v rows of qkv): slice it once, all together.
    per_tensor: dict[tuple[str, int], list[torch.Tensor]] = {}
    for m in group.members:
        per_tensor.setdefault((m.param, m.dim), []).append(m.indices(keep))
    for (name, dim), parts in per_tensor.items():
        p = params[name]
        p.data = p.data.index_select(dim, torch.cat(parts).to(p.device)).contiguous()
        p.grad = None
    if group.kind == "heads":
        attn = model.blocks[group.block].attn
        set_heads(attn, len(keep), attn.head_dim)
    elif group.kind == "head_dims":
        attn = model.blocks[group.block].attn
        head_dim = len(keep) // attn.num_heads
        # timm scales q·k by head_dim ** -0.5; fold the change into q so the logits stay as trained.
        correction = (head_dim / attn.head_dim) ** 0.5
        with torch.no_grad():
            attn.qkv.weight[: len(keep)] *= correction
            if attn.qkv.bias is not None:
                attn.qkv.bias[: len(keep)] *= correction
        set_heads(attn, attn.num_heads, head_dim)


def sync_attributes(model: VisionTransformer) -> None:
    """Make every module's size attributes agree with its (sliced) tensors."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = (module.weight.shape[0],)
        elif isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
    model.embed_dim = model.num_features = model.cls_token.shape[-1] if model.cls_token is not None else model.pos_embed.shape[-1]
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = model.embed_dim


def block_skip_scores(model: VisionTransformer, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """KL(p_model ‖ p_without_block_i) on a sample for every block: what deleting it costs."""

    def log_probs() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([F.log_softmax(model(x), -1) for x in images.split(batch_size)])

    model.eval()
    reference = log_probs()
    blocks = model.blocks
    scores = torch.zeros(len(blocks))
    try:
        for i in range(len(blocks)):
            model.blocks = nn.Sequential(*[b for j, b in enumerate(blocks) if j != i])
            scores[i] = F.kl_div(log_probs(), reference, reduction="batchmean", log_target=True)
    finally:
        model.blocks = blocks
    return scores


def remove_blocks(model: VisionTransformer, keep: list[int]) -> None:
    """Keep only blocks `keep` (in their order): a shallower model."""
    model.blocks = nn.Sequential(*[model.blocks[i] for i in sorted(keep)])
    if hasattr(model, "feature_info"):
        model.feature_info = [dict(f, module=f"blocks.{i}") for i, f in enumerate(model.feature_info[: len(keep)])]


def select_per_layer(scores: torch.Tensor, remove_fraction: float, minimum: int, multiple: int = 1) -> torch.Tensor:
    """Indices to keep: the highest-scoring structures after removing a fraction (rounded)."""
    count = len(scores)
    keep = max(minimum, count - math.floor(remove_fraction * count))
    keep = min(count, max(minimum, multiple * round(keep / multiple)))
    return scores.topk(keep).indices
