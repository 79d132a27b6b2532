"""The `finetune` stage: cross-entropy training of the model as it is (also recovery after pruning)."""

from __future__ import annotations

from torch import nn

from vitdeploy.recipe.schema import FinetuneConfig
from vitdeploy.torch.stages.base import StageContext, register_stage
from vitdeploy.torch.stages.loop import cross_entropy, train


@register_stage(FinetuneConfig)
def finetune(model: nn.Module, ctx: StageContext, cfg: FinetuneConfig) -> nn.Module:
    ctx.report.update(train(model, ctx, cfg, cross_entropy(cfg.label_smoothing), "finetune"))
    return model
