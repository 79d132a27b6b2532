"""The `prune` stage: remove attention heads, MLP hidden units and optionally embedding channels.

Targets: `ratio`, the fraction of the model's parameters removed, ranked globally over every
block's heads and MLP units; or `head_ratio` / `mlp_ratio`, the same fraction in every block;
`remove_blocks` deletes whole blocks first (greedily, the least missed by output KL);
`embed_ratio` then removes embedding channels; `head_dim_ratio` narrows every head last
(the channels each head keeps are its own; the softmax scale is folded into q). Taylor and KL scores estimate the loss a
structure's removal costs, so the global ranking divides them by the parameters the
structure holds (least loss per parameter goes first). L1 magnitudes are not comparable
across layers, so each group's scores are divided by their mean and ranked as they are.
With `steps` > 1 the target is reached in equal steps, re-scoring in between.
Recovery is the next stage's job (`finetune`, or `distill` from the unpruned teacher).
"""

from __future__ import annotations

import math
import time

import torch
from timm.layers.attention import Attention
from torch import nn

from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import preprocess
from vitdeploy.recipe.schema import PruneConfig
from vitdeploy.torch.models import count_macs, count_parameters, describe
from vitdeploy.torch.pruning import (
    IMPORTANCES,
    Group,
    Importance,
    block_skip_scores,
    embed_group,
    head_dim_group,
    head_group,
    keep_per_head,
    mlp_group,
    prune_group,
    remove_blocks,
    select_per_layer,
    structure_cost,
    sync_attributes,
)
from vitdeploy.torch.stages.base import StageContext, register_stage


def block_groups(model: nn.Module) -> list[Group]:
    return [g for i in range(len(model.blocks)) for g in (head_group(model, i), mlp_group(model, i))]


def minimum_kept(group: Group, cfg: PruneConfig) -> int:
    return cfg.min_heads if group.kind == "heads" else min(group.count, cfg.round_mlp_to)


def global_plan(model: nn.Module, groups: list[Group], scores: list[torch.Tensor], remove: int, cfg: PruneConfig) -> list[int]:
    """How many structures each group keeps so that about `remove` parameters go, least important first."""
    costs = [structure_cost(model, g) for g in groups]
    by_loss = cfg.importance in ("taylor", "kl")
    candidates = []
    for gi, (s, cost) in enumerate(zip(scores, costs, strict=True)):
        rank = s / cost if by_loss else s / s.mean().clamp_min(1e-12)
        candidates += [(float(r), gi) for r in rank.sort().values]
    candidates.sort()
    removed, kept = 0, [g.count for g in groups]
    for _, gi in candidates:
        if removed >= remove:
            break
        if kept[gi] > minimum_kept(groups[gi], cfg):
            kept[gi] -= 1
            removed += costs[gi]
    for gi, g in enumerate(groups):  # MLP widths to a multiple of round_mlp_to
        if g.kind == "mlp":
            m = cfg.round_mlp_to
            kept[gi] = min(g.count, max(m, m * round(kept[gi] / m)))
    return kept


def score_and_prune(model: nn.Module, importance: Importance, groups: list[Group], kept: list[int] | None, plan) -> None:
    scores = [importance(model, g) for g in groups]
    counts = kept if kept is not None else plan(scores)
    for g, s, n in zip(groups, scores, counts, strict=True):
        if n < g.count:
            prune_group(model, g, s.topk(n).indices)
    sync_attributes(model)


def narrow_heads(model: nn.Module, importance: Importance, x: torch.Tensor, y: torch.Tensor, cfg: PruneConfig) -> None:
    """Remove `head_dim_ratio` of every head's channels (widths stay a multiple of 8 where they can)."""
    for blk in model.blocks:
        attn = blk.attn
        plain = type(attn) is Attention and getattr(attn, "gate", None) is None
        if not plain or not all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm")):
            raise UserError(
                "prune.head_dim_ratio needs timm's exact attention without qk_norm, scale_norm or gating; "
                "narrow heads before a nystrom stage"
            )
    importance.prepare(model, x, y, cfg.batch_size)
    for i, blk in enumerate(model.blocks):
        width = blk.attn.head_dim
        keep = width - math.floor(cfg.head_dim_ratio * width)
        keep = max(1, 8 * round(keep / 8)) if width >= 16 else max(1, keep)
        if keep < width:
            group = head_dim_group(model, i)
            prune_group(model, group, keep_per_head(importance(model, group), blk.attn.num_heads, keep))
    sync_attributes(model)


def delete_blocks(model: nn.Module, x: torch.Tensor, cfg: PruneConfig) -> list[int]:
    """Delete `remove_blocks` blocks one at a time, re-scoring in between; their original indices."""
    if cfg.remove_blocks >= len(model.blocks):
        raise UserError(f"prune.remove_blocks={cfg.remove_blocks} would delete all {len(model.blocks)} blocks")
    remaining, deleted = list(range(len(model.blocks))), []
    for _ in range(cfg.remove_blocks):
        skip = int(block_skip_scores(model, x, cfg.batch_size).argmin())
        remove_blocks(model, [i for i in range(len(model.blocks)) if i != skip])
        deleted.append(remaining.pop(skip))
    return sorted(deleted)


@register_stage(PruneConfig)
def prune(model: nn.Module, ctx: StageContext, cfg: PruneConfig) -> nn.Module:
    started = time.perf_counter()
    img_size = model.patch_embed.img_size[0]
    model.cpu()
    before = {
        "parameters": count_parameters(model),
        "macs": count_macs(model, img_size),
        "architecture": describe(model).summary(),
    }
    sample = ctx.split(ctx.recipe.data.train_split).subset(cfg.samples, seed=cfg.seed)
    x = torch.from_numpy(preprocess(sample.images, ctx.recipe.data.preprocess, img_size))
    y = torch.from_numpy(sample.labels)
    importance = IMPORTANCES[cfg.importance]()
    original = before["parameters"]
    deleted = delete_blocks(model, x, cfg)
    original_counts = [g.count for g in block_groups(model)]

    if cfg.embed_ratio:
        importance.prepare(model, x, y, cfg.batch_size)
        group = embed_group(model)
        prune_group(model, group, select_per_layer(importance(model, group), cfg.embed_ratio, 8, multiple=8))
        sync_attributes(model)

    for step in range(1, cfg.steps + 1):
        fraction = step / cfg.steps
        importance.prepare(model, x, y, cfg.batch_size)
        groups = block_groups(model)
        if cfg.ratio is not None:
            remove = count_parameters(model) - round(original * (1 - cfg.ratio * fraction))

            def plan(scores, groups=groups, remove=remove):
                return global_plan(model, groups, scores, remove, cfg)

            score_and_prune(model, importance, groups, None, plan)
        else:
            kept = []
            for g, n0 in zip(groups, original_counts, strict=True):
                ratio = (cfg.head_ratio if g.kind == "heads" else cfg.mlp_ratio) or 0.0
                m = 1 if g.kind == "heads" else cfg.round_mlp_to
                target = n0 - math.floor(ratio * fraction * n0)
                kept.append(min(g.count, max(minimum_kept(g, cfg), m * round(target / m))))
            score_and_prune(model, importance, groups, kept, None)
    if cfg.head_dim_ratio:
        narrow_heads(model, importance, x, y, cfg)
    model.zero_grad(set_to_none=True)
    after = {
        "parameters": count_parameters(model),
        "macs": count_macs(model, img_size),
        "architecture": describe(model).summary(),
    }
    ctx.report.update(
        importance=cfg.importance,
        before=before,
        after=after,
        blocks_removed=deleted,
        parameters_removed=round(1 - after["parameters"] / original, 4),
        macs_removed=round(1 - after["macs"] / before["macs"], 4),
        seconds=round(time.perf_counter() - started, 2),
    )
    return model.eval()
