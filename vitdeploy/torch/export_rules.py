"""Export rules applied: every module with a registered rule (`vitdeploy.torch.registry`) is
rewritten, on the copy that gets exported, into its export form."""

from __future__ import annotations

from torch import nn

from vitdeploy.torch.registry import EXPORT_RULES


def apply_export_rules(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a rule by its export form; returns `model`."""
    for name, child in list(model.named_children()):
        rule = EXPORT_RULES.get(type(child))
        if rule is not None:
            setattr(model, name, rule(child))
        else:
            apply_export_rules(child)
    return model
