"""The `nystrom` stage: swap exact softmax attention for Nyström attention, keeping the weights.

A following `finetune` or `distill` stage recovers what the approximation loses.
"""

from __future__ import annotations

from timm.layers.attention import Attention
from torch import nn

from vitdeploy.core.errors import UserError
from vitdeploy.recipe.schema import NystromConfig
from vitdeploy.torch.models import count_macs, count_parameters, num_tokens
from vitdeploy.torch.nystrom import NystromAttention
from vitdeploy.torch.stages.base import StageContext, register_stage


@register_stage(NystromConfig)
def nystrom(model: nn.Module, ctx: StageContext, cfg: NystromConfig) -> nn.Module:
    depth = len(model.blocks)
    chosen = cfg.blocks if cfg.blocks is not None else list(range(depth))
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad:
        raise UserError(f"nystrom.blocks: {bad} out of range; the model has blocks 0..{depth - 1}")
    img_size = model.patch_embed.img_size[0]
    macs_before = count_macs(model, img_size)
    tokens = num_tokens(model)
    for i in chosen:
        attn = model.blocks[i].attn
        if type(attn) is not Attention:
            raise UserError(f"nystrom: block {i} has {type(attn).__name__}, not exact timm Attention")
        model.blocks[i].attn = NystromAttention(attn, cfg.landmarks, tokens, cfg.pinv_iterations, cfg.conv_kernel)
    ctx.report.update(
        blocks=chosen,
        tokens=tokens,
        landmarks=cfg.landmarks,
        parameters=count_parameters(model),
        macs_before=macs_before,
        macs_after=count_macs(model, img_size),
    )
    return model
