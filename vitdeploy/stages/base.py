"""The stage registry: a recipe's `stages:` list maps straight to these functions.

A stage is a function `(model, context, config) -> model`. It may return the same module
changed in place or a new one (pruning returns a real, smaller model). Register one with
`@register_stage(ConfigClass)`; its config class lives in `vitdeploy.recipe`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitdeploy.data import ImageSet, load_split
from vitdeploy.recipe import Recipe, Section

StageFn = Callable[[nn.Module, "StageContext", Any], nn.Module]

STAGES: dict[str, StageFn] = {}


def register_stage(config_type: type[Section]) -> Callable[[StageFn], StageFn]:
    name = config_type.model_fields["stage"].default

    def decorator(fn: StageFn) -> StageFn:
        if name in STAGES:
            raise ValueError(f"stage '{name}' registered twice")
        STAGES[name] = fn
        return fn

    return decorator


def get_stage(name: str) -> StageFn:
    # Importing the modules that define stages fills the registry.
    import vitdeploy.train  # noqa: F401

    return STAGES[name]


@dataclass
class StageContext:
    """What a stage may use besides the model: the recipe, the device, its own folder."""

    recipe: Recipe
    device: torch.device
    work_dir: Path
    report: dict[str, Any] = field(default_factory=dict)  # what stages add to the manifest
    _splits: dict[str, ImageSet] = field(default_factory=dict)

    def split(self, name: str) -> ImageSet:
        if name not in self._splits:
            self._splits[name] = load_split(self.recipe.data, name)
        return self._splits[name]


@functools.cache
def resolve_device(name: str) -> torch.device:
    from vitdeploy.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda, cuda:N or auto") from None
