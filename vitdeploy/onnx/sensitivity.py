"""Per-layer sensitivity: each quantizable layer group quantized alone, and what it does to the outputs.

Why: a ViT that loses accuracy in INT8 usually loses it in a few layers (the ones reading
outlier channels, the classifier). Quantizing one layer at a time against the same calibrated
ranges shows which; keeping those few in float (`quantize.exclude_nodes`) recovers most of the
loss at little of the speed. Calibration runs once; each group then costs one quantization pass
and one pass over the images.

A group is the layers reading one activation (q, k and v read the same LayerNorm output): ONNX
Runtime quantizes that activation once for all of them, so keeping one of them in float changes
nothing. On the outlier teacher (`benchmarks/outlier_teacher.py`) keeping block 2's q alone in
float left the loss at 11.5 points; its q, k and v together and block 0's fc1: 3.1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import save_tensors_data

from vitdeploy.core.quiet import logger_level
from vitdeploy.data.datasets import ImageSet, batches, preprocess
from vitdeploy.onnx.quantize import (
    ArrayCalibrationReader,
    calibrate,
    infer_types,
    nodes_to_exclude,
    quantize_with_ranges,
    scratch_beside,
)
from vitdeploy.recipe.schema import Preprocess, QuantizeSpec
from vitdeploy.runtime.sessions import open_predictor


@dataclass(frozen=True)
class LayerSensitivity:
    group: str  # its first layer's name, and how many more read the same input
    nodes: tuple[str, ...]
    op_type: str
    top1_drop: float  # points below the FP32 file, on the images
    logit_error: float  # mean |logit - FP32 logit|
    agreement: float  # share of images whose top-1 is FP32's

    def as_dict(self) -> dict:
        return asdict(self)


def quantizable_nodes(model: onnx.ModelProto, spec: QuantizeSpec) -> list[str]:
    """The nodes static INT8 with `spec` would quantize, in graph order."""
    excluded = set(nodes_to_exclude(model, spec))
    op_types = set(spec.op_types) - set(spec.exclude_op_types)
    return [n.name for n in model.graph.node if n.op_type in op_types and n.name not in excluded]


def quantizable_groups(model: onnx.ModelProto, spec: QuantizeSpec) -> list[tuple[str, ...]]:
    """The quantizable nodes grouped by the activation they read, in graph order."""
    wanted, groups = set(quantizable_nodes(model, spec)), {}
    for node in model.graph.node:
        if node.name in wanted:
            groups.setdefault(node.input[0], []).append(node.name)
    return [tuple(g) for g in groups.values()]


def group_label(nodes: tuple[str, ...]) -> str:
    return nodes[0] + (f" +{len(nodes) - 1}" if len(nodes) > 1 else "")


def logits_of(path: Path, images: ImageSet, pre: Preprocess, size: int | None, batch: int) -> np.ndarray:
    predict = open_predictor(path, "cpu")
    return np.concatenate([predict(preprocess(x, pre, size)) for x, _ in batches(images, batch)])


def layer_sensitivity(
    fp32: Path,
    spec: QuantizeSpec,
    calibration: ArrayCalibrationReader,
    images: ImageSet,
    pre: Preprocess,
    size: int | None,
    batch: int = 32,
    advance: Callable[[str], None] = lambda node: None,
) -> list[LayerSensitivity]:
    """Each layer group static INT8 with `spec` alone, scored on `images`; most harmful first."""
    model = onnx.load(str(fp32), load_external_data=False)
    groups, op_type = quantizable_groups(model, spec), {n.name: n.op_type for n in model.graph.node}
    del model
    reference = logits_of(fp32, images, pre, size, batch)
    correct = reference.argmax(1) == images.labels
    found = []
    # The quantizer's own scratch on the file's disk, as the build's; its warnings kept down.
    with scratch_beside(fp32) as tmp, logger_level(logging.ERROR):
        typed, ranges, one = Path(tmp) / "typed.onnx", Path(tmp) / "ranges.json", Path(tmp) / "one.onnx"
        infer_types(fp32, typed)
        op_types = [t for t in spec.op_types if t not in spec.exclude_op_types]
        save_tensors_data(calibrate(typed, spec, op_types, calibration), ranges)
        for nodes in groups:
            quantize_with_ranges(typed, one, spec, ranges, excluded=[], only=list(nodes))
            out = logits_of(one, images, pre, size, batch)
            drop = 100 * (correct.mean() - (out.argmax(1) == images.labels).mean())
            agreement = float((out.argmax(1) == reference.argmax(1)).mean())
            error = float(np.abs(out - reference).mean())
            found.append(LayerSensitivity(group_label(nodes), nodes, op_type[nodes[0]], round(float(drop), 2), error, agreement))
            advance(nodes[0])
    return sorted(found, key=lambda s: (-s.logit_error, s.group))
