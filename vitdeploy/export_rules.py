"""Export rules: how a module is rewritten, on the copy that gets exported, for ONNX.

A rule maps a module to its export form: same outputs, a graph that ONNX Runtime runs or
fuses better. Modules register their own rule beside their definition (see
`vitdeploy.nystrom`); dispatch is on the exact type, so a subclass never inherits a rewrite
that does not fit it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ExportRule = Callable[[nn.Module], nn.Module]
EXPORT_RULES: dict[type[nn.Module], ExportRule] = {}


def register_export_rule(module_type: type[nn.Module]) -> Callable[[ExportRule], ExportRule]:
    def decorator(fn: ExportRule) -> ExportRule:
        EXPORT_RULES[module_type] = fn
        return fn

    return decorator


def apply_export_rules(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a rule by its export form; returns `model`."""
    import vitdeploy.nystrom  # noqa: F401  (registers its rule)

    for name, child in list(model.named_children()):
        rule = EXPORT_RULES.get(type(child))
        if rule is not None:
            setattr(model, name, rule(child))
        else:
            apply_export_rules(child)
    return model
