"""PyTorch stages of a recipe, one module per stage, all filling one registry.

`finetune` and `distill` share the training loop in `loop`; `prune` and `nystrom` transform
the model's structure and leave recovery to a following `finetune` or `distill` stage.
"""

from __future__ import annotations

from vitdeploy.torch.stages import distill, finetune, nystrom, prune  # noqa: F401  (fill the registry)
from vitdeploy.torch.stages.base import STAGES, StageContext, StageFn, register_stage, resolve_device


def get_stage(name: str) -> StageFn:
    return STAGES[name]


__all__ = ["STAGES", "StageContext", "get_stage", "register_stage", "resolve_device"]
