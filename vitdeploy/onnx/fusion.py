"""ONNX Runtime's transformer graph optimizer (formerly the onnxruntime-tools package).

It fuses LayerNorm+residual into SkipLayerNormalization, bias+GELU into BiasGelu and, when
q/k/v are separate MatMuls (see `models.split_qkv`), the attention block into Attention.
Run before quantization: in dynamic mode a fused Attention becomes QAttention.

After fusion, `split_skip_layernorm` undoes one of them on purpose: ONNX Runtime 1.32's CPU
SkipLayerNormalization kernel measured 4-5x slower than Add + LayerNormalization on the
same tensors (16x65x192: 612 us against 127-151 us, 2 threads), about a fifth of a small
ViT's run time. The optimizer still needs SkipLayerNormalization as the anchor for its
attention fusion, so the split runs afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnx import helper

from vitdeploy.core.quiet import logger_level
from vitdeploy.core.storage import atomic_path
from vitdeploy.onnx import detached
from vitdeploy.onnx.graph import op_counts
from vitdeploy.recipe.schema import OptimizeSpec


@logger_level(logging.ERROR, "onnxruntime.transformers")
def optimize_transformer(
    source: Path, target: Path, spec: OptimizeSpec, num_heads: int, hidden_size: int, fuse_attention: bool
) -> dict:
    """Fuse `source` into `target`; returns fused-op statistics and op counts before/after."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(spec.model_type)
    options.enable_attention = fuse_attention
    options.enable_gelu_approximation = spec.gelu_approximation

    model = onnx.load(str(source))
    before = op_counts(model)
    reordered = branch_first_residual_adds(model)
    # Attention fusion concatenates weights, and ONNX Runtime's own pass (opt_level > 0) runs the
    # model: both need the weights; every other fusion reads the graph only.
    weights = detached.detach_weights(model) if not fuse_attention and spec.opt_level == 0 else {}
    optimized = optimizer.optimize_model(
        model,
        model_type=spec.model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=spec.opt_level,
        optimization_options=options,
        use_gpu=spec.use_gpu,
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    split = split_skip_layernorm(optimized.model) if spec.split_skip_layernorm else 0
    detached.attach_weights(optimized.model, weights)
    with atomic_path(target) as tmp:
        optimized.save_model_to_file(str(tmp))
    return {
        "attention_fusion": fuse_attention,
        "fused_operators": fused,
        "skip_layernorm_split": split,
        "residual_adds_reordered": reordered,
        "ops_before": before,
        "ops_after": op_counts(optimized.model),
    }


def branch_first_residual_adds(model: onnx.ModelProto) -> int:
    """Put the branch (a Linear's output: Add fed by MatMul) first in each residual Add.

    ORT's attention fusion walks up from SkipLayerNormalization to the first Add parent it
    finds and does not backtrack. In block 0 the residual input is itself an Add (the
    pos-embed addition), so the walk took it and block 0 never fused. Addition commutes;
    the outputs are unchanged. Returns how many Adds were reordered.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name for init in model.graph.initializer}

    def op_type(name: str) -> str | None:
        return producer[name].op_type if name in producer else None

    def is_linear_output(name: str) -> bool:
        return op_type(name) == "Add" and any(op_type(i) == "MatMul" for i in producer[name].input)

    reordered = 0
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or set(node.input) & weights:
            continue
        first, second = node.input
        if is_linear_output(second) and not is_linear_output(first):
            node.input[0], node.input[1] = second, first
            reordered += 1
    return reordered


def split_skip_layernorm(model: onnx.ModelProto) -> int:
    """Rewrite each SkipLayerNormalization as Add(input, bias) -> Add(skip) -> LayerNormalization.

    The bias goes first so that ONNX Runtime can fold it into the preceding (quantized) MatMul.
    Nodes whose mean/inv-std outputs are consumed are left alone. Returns how many were split.
    """
    graph = model.graph
    if not any(op.domain in ("", "ai.onnx") and op.version >= 17 for op in model.opset_import):
        return 0  # LayerNormalization needs opset 17; the recipe schema enforces it for our exports
    consumed = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    nodes, split = [], 0
    for node in graph.node:
        outputs = [*node.output, "", "", "", ""][:4]
        if node.op_type != "SkipLayerNormalization" or consumed & {o for o in outputs[1:3] if o}:
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = [*node.input, "", "", ""][:5]
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = outputs[3] or f"{node.name}_sum"
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{node.name}_biased"], name=f"{node.name}_bias"))
            x = f"{node.name}_biased"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}_residual"))
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        nodes.append(
            helper.make_node("LayerNormalization", norm_inputs, [outputs[0]], name=f"{node.name}_norm", axis=-1, epsilon=epsilon)
        )
        split += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return split
