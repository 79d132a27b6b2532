"""FP16 variants of an FP32 ONNX artifact, for GPU execution providers. Torch-free.

Weights and activations become float16 except in the ops listed in `keep_fp32`: by default
LayerNormalization (its variance can overflow float16 on the outlier channels ViTs have)
and Softmax (a float16 exp of large logits saturates). Inputs and outputs stay float32 so
callers feed the same arrays as before, and the preprocessing metadata is carried over.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from vitdeploy.core.quiet import logger_level
from vitdeploy.core.storage import atomic_path
from vitdeploy.onnx.graph import op_counts

KEEP_FP32 = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "Softmax")


@logger_level(logging.WARNING, "onnxruntime.transformers")
def convert_fp16(source: Path, target: Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> dict:
    """Write the float16 form of `source` to `target`; returns what changed."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise ValueError(f"{source} already holds float16 weights")
    if any(i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for i in model.graph.initializer):
        raise ValueError(f"{source} is quantized (INT8); convert its FP32 artifact instead")
    metadata = {p.key: p.value for p in model.metadata_props}
    casts_before = op_counts(model).get("Cast", 0)  # the converter edits `model` in place
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(keep_io_types=True, op_block_list=list(keep_fp32))
    converted = wrapped.model
    onnx.helper.set_model_props(converted, metadata | {"vitdeploy.precision": "fp16", "vitdeploy.fp16_source": source.name})
    with atomic_path(target) as tmp:
        onnx.save(converted, str(tmp))
    return {
        "source": str(source),
        "target": str(target),
        "bytes_before": source.stat().st_size,
        "bytes_after": target.stat().st_size,
        "kept_fp32": list(keep_fp32),
        "casts_added": op_counts(converted).get("Cast", 0) - casts_before,
    }
