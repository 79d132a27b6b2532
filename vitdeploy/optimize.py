"""ONNX Runtime's transformer graph optimizer (formerly the onnxruntime-tools package).

It fuses LayerNorm+residual into SkipLayerNormalization, bias+GELU into BiasGelu and, when
q/k/v are separate MatMuls (see `models.split_qkv`), the attention block into Attention.
Run before quantization: in dynamic mode a fused Attention becomes QAttention.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from vitdeploy.graph import op_counts
from vitdeploy.recipe import OptimizeSpec
from vitdeploy.storage import atomic_path


def optimize_transformer(
    source: Path, target: Path, spec: OptimizeSpec, num_heads: int, hidden_size: int, fuse_attention: bool
) -> dict:
    """Fuse `source` into `target`; returns fused-op statistics and op counts before/after."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(spec.model_type)
    options.enable_attention = fuse_attention

    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    before = op_counts(onnx.load(str(source)))
    optimized = optimizer.optimize_model(
        str(source),
        model_type=spec.model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=spec.opt_level,
        optimization_options=options,
        use_gpu=False,
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    with atomic_path(target) as tmp:
        optimized.save_model_to_file(str(tmp))
    return {
        "attention_fusion": fuse_attention,
        "fused_operators": fused,
        "ops_before": before,
        "ops_after": op_counts(optimized.model),
    }
