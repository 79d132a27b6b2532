"""Static INT8 by NNCF's post-training quantization, as a second quantizer beside ONNX Runtime's.

Why a second one: on OpenVINO, NNCF places quantizers where OpenVINO's INT8 kernels want them
(attention's q and k quantized ahead of their reshapes, its own SmoothQuant): there, ONNX
Runtime's static QDQ of the same ViT-S/16 and ViT-B/16 at 224x224 ran at 0.95-0.97x the speed
of NNCF's file (2-core Intel Xeon with AMX; docs/scale.md). vitdeploy keeps what NNCF does
not do: the structure (pruned, distilled students), the checks, the measured choice.

NNCF reads the standard-operator graph (the recipe names an OpenVINO runtime) and writes
standard QDQ ONNX with INT8 weights, so the artifact runs on ONNX Runtime too.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from types import ModuleType

import onnx

from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import atomic_path
from vitdeploy.data.datasets import ImageBatches
from vitdeploy.onnx.graph import quantized_op_counts, weight_stats
from vitdeploy.recipe.schema import QuantizeSpec


def require_nncf() -> ModuleType:
    try:
        import nncf
    except ImportError:
        raise UserError("quantize.backend nncf needs NNCF: pip install 'vitdeploy[openvino]'") from None
    nncf.set_log_level(logging.ERROR)
    return nncf


def quantize_with_nncf(
    model: onnx.ModelProto, target: Path, spec: QuantizeSpec, images: ImageBatches, input_name: str, excluded: list[str]
) -> dict:
    """NNCF PTQ (transformer preset) of `model` into `target`, calibrated on `images` one by one;
    `excluded`: node names left in float. Returns what was done, for the manifest."""
    nncf = require_nncf()
    dataset = nncf.Dataset(range(len(images)), lambda i: {input_name: images[i : i + 1]})
    quantized = nncf.quantize(
        model,
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=excluded, validate=False),
    )
    with atomic_path(target) as tmp:
        onnx.save(quantized, str(tmp))
    return {
        "backend": "nncf",
        "nncf_version": metadata.version("nncf"),
        "mode": "static",
        "format": "qdq",
        "preset": "transformer (mixed: symmetric int8 weights, asymmetric activations)",
        "excluded_nodes": excluded,
        "per_channel": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calibration": spec.calibration.model_dump(include={"samples", "split"}) | {"images": len(images), "batch_size": 1},
        "quantized_ops": quantized_op_counts(quantized),
        "weights": weight_stats(quantized),
    }
