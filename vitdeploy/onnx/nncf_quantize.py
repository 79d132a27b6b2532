"""Static INT8 by NNCF's post-training quantization, as a second quantizer beside ONNX Runtime's.

Why a second one: on OpenVINO, NNCF places quantizers where OpenVINO's INT8 kernels want them
(attention's q and k quantized ahead of their reshapes, its own SmoothQuant): there, ONNX
Runtime's static QDQ of the same ViT-S/16 and ViT-B/16 at 224x224 ran at 0.95-0.97x the speed
of NNCF's file (2-core Intel Xeon with AMX; docs/scale.md). vitdeploy keeps what NNCF does
not do: the structure (pruned, distilled students), the checks, the measured choice.

NNCF reads the standard-operator graph (the recipe names an OpenVINO runtime) and writes
standard QDQ ONNX with INT8 weights, so the artifact runs on ONNX Runtime too.

With `quantize.nncf_max_drop`, NNCF's accuracy control runs instead: it quantizes, scores the
result on validation images, and reverts the quantizers that cost most, one by one, until the
drop is within the budget. Its SmoothQuant is off then: NNCF 3.4.0's ONNX backend reverts
quantizers but leaves SmoothQuant's scales in front of the restored float weights, and the
reference teacher came back from it at 15.57 % top-1 (77.85 % in FP32; docs/tune.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import atomic_path
from vitdeploy.data.datasets import ImageBatches
from vitdeploy.onnx.graph import quantized_op_counts, weight_stats
from vitdeploy.recipe.schema import QuantizeSpec
from vitdeploy.runtime.sessions import open_predictor


@dataclass(frozen=True)
class ValidationImages:
    """What accuracy control scores a quantized model on: images preprocessed when sliced, labels."""

    images: ImageBatches
    labels: np.ndarray
    provider: str = "openvino"  # where they are scored: the runtime the artifact is for


def require_nncf() -> ModuleType:
    try:
        import nncf
    except ImportError:
        raise UserError("quantize.backend nncf needs NNCF: pip install 'vitdeploy[openvino]'") from None
    nncf.set_log_level(logging.ERROR)
    return nncf


def quantize_with_nncf(
    model: onnx.ModelProto,
    target: Path,
    spec: QuantizeSpec,
    images: ImageBatches,
    input_name: str,
    excluded: list[str],
    validation: ValidationImages | None = None,
) -> dict:
    """NNCF PTQ (transformer preset) of `model` into `target`, calibrated on `images` one by one;
    `excluded`: node names left in float; with `spec.nncf_max_drop`, accuracy-controlled on
    `validation`. Returns what was done, for the manifest."""
    nncf = require_nncf()
    dataset = nncf.Dataset(range(len(images)), lambda i: {input_name: images[i : i + 1]})
    common = {
        "model_type": nncf.ModelType.TRANSFORMER,
        "subset_size": len(images),
        "ignored_scope": nncf.IgnoredScope(names=excluded, validate=False),
    }
    controlled = {}
    if spec.nncf_max_drop is None:
        quantized = nncf.quantize(model, dataset, **common)
    else:
        if validation is None:
            raise ValueError("quantize.nncf_max_drop needs validation images")
        no_smooth_quant = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(range(len(validation.labels))), top1_of(validation),
            max_drop=spec.nncf_max_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=no_smooth_quant, **common,
        )  # fmt: skip
        controlled = {
            "accuracy_control": {
                "max_drop": spec.nncf_max_drop,
                "validation_images": len(validation.labels),
                "scored_on": validation.provider,
                "smooth_quant": False,
            }
        }
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
    } | controlled


def top1_of(validation: ValidationImages) -> Callable[[onnx.ModelProto, Iterable[int]], tuple[float, list[float]]]:
    """NNCF's validation function: the top-1 of a model on the images it names, and per image
    whether it was right (NNCF ranks the quantizers to revert by those)."""

    def validate(model: onnx.ModelProto, indices: Iterable[int]) -> tuple[float, list[float]]:
        chosen = np.fromiter(indices, dtype=np.int64)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(model, str(path))
            predict = open_predictor(path, validation.provider)
            right: list[float] = []
            for start in range(0, len(chosen), 64):
                part = chosen[start : start + 64]
                x = np.concatenate([validation.images[i : i + 1] for i in part])
                right += (predict(x).argmax(1) == validation.labels[part]).astype(float).tolist()
        return float(np.mean(right)), right

    return validate
