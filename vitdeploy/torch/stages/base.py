"""The stage registry and what a stage may use besides the model.

A stage is a function `(model, context, config) -> model`. It may change the model in place
or return another one (pruning returns a real, smaller model; distillation with a token
returns DeiT's distilled form). Register one with `@register_stage(ConfigClass)`; its config
class lives in `vitdeploy.recipe.schema`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitdeploy.data.classes import decode_size
from vitdeploy.data.datasets import ImageSet, load_split
from vitdeploy.recipe.schema import Recipe, Section

StageFn = Callable[[nn.Module, "StageContext", Any], nn.Module]

STAGES: dict[str, StageFn] = {}


def stage_name(config_type: type[Section]) -> str:
    return config_type.model_fields["stage"].default


def register_stage(config_type: type[Section]) -> Callable[[StageFn], StageFn]:
    name = stage_name(config_type)

    def decorator(fn: StageFn) -> StageFn:
        if name in STAGES:
            raise ValueError(f"stage '{name}' registered twice")
        STAGES[name] = fn
        return fn

    return decorator


@dataclass
class StageContext:
    """The recipe, the device, the stage's own folder and what the stage reports to the manifest."""

    recipe: Recipe
    device: torch.device
    work_dir: Path
    index: int = 0
    checkpoint_every_s: float = 300.0  # training state saved at least this often (and at every epoch end)
    report: dict[str, Any] = field(default_factory=dict)
    _splits: dict[str, ImageSet] = field(default_factory=dict)

    def split(self, name: str) -> ImageSet:
        if name not in self._splits:
            self._splits[name] = load_split(self.recipe.data, name, decode_size(self.recipe))
        return self._splits[name]


@functools.cache
def resolve_device(name: str) -> torch.device:
    from vitdeploy.core.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda, cuda:N or auto") from None
