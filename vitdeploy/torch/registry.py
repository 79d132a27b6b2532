"""The PyTorch side's registries, in a leaf module: attention kinds and export rules.

Implementations register themselves beside their definitions (`vitdeploy.torch.nystrom`), and
importing `vitdeploy.torch` imports every shipped one; nothing here imports its users, so the
registries and the models that read them never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.layers.attention import Attention
from torch import nn

from vitdeploy.core.errors import UserError

# Attention kinds other than timm's exact attention: kind -> builder(exact, params, num_tokens).
AttentionBuilder = Callable[[Attention, dict[str, Any], int], nn.Module]
ATTENTION_KINDS: dict[str, AttentionBuilder] = {}

# An export rule maps a module to its export form: same outputs, a graph that ONNX Runtime runs
# or fuses better. Dispatch is on the exact type, so a subclass never inherits a rewrite that
# does not fit it.
ExportRule = Callable[[nn.Module], nn.Module]
EXPORT_RULES: dict[type[nn.Module], ExportRule] = {}


def register_attention(kind: str) -> Callable[[AttentionBuilder], AttentionBuilder]:
    def decorator(fn: AttentionBuilder) -> AttentionBuilder:
        ATTENTION_KINDS[kind] = fn
        return fn

    return decorator


def attention_builder(kind: str) -> AttentionBuilder:
    if kind not in ATTENTION_KINDS:
        raise UserError(f"unknown attention kind '{kind}'; known: exact, {', '.join(sorted(ATTENTION_KINDS))}")
    return ATTENTION_KINDS[kind]


def register_export_rule(module_type: type[nn.Module]) -> Callable[[ExportRule], ExportRule]:
    def decorator(fn: ExportRule) -> ExportRule:
        EXPORT_RULES[module_type] = fn
        return fn

    return decorator
