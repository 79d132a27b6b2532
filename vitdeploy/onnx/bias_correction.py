"""Bias correction after INT8: give each quantized layer's output the FP32 model's mean.

Rounding weights and activations shifts a layer's output mean a little, per channel, and the
shifts add up through the blocks. For every quantized MatMul followed by an Add of an FP32 bias,
the mean of its output over the calibration images is measured in the FP32 and in the INT8
model and the difference is added to the bias: layer by layer in graph order, the INT8 model
re-run after each correction, so a layer is corrected for what the corrected layers before it
feed it (NNCF's "fast bias correction" corrects each layer from FP32 inputs instead). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitdeploy.data.datasets import ImageBatches


@dataclass(frozen=True)
class BiasedLayer:
    output: str  # the MatMul's output, before the bias
    bias: str  # the FP32 initializer the Add adds
    biased: str  # the Add's output: what the correction makes match FP32 on average


def biased_layers(model: onnx.ModelProto) -> list[BiasedLayer]:
    """Quantized MatMuls (weight from a DequantizeLinear) whose output feeds an Add of an FP32 bias, in graph order."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers = []
    for n in model.graph.node:
        weight = producer.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
        if len(adds) != 1:
            continue
        other = next((i for i in adds[0].input if i != n.output[0]), None)
        bias = inits.get(other) if other is not None else None
        if bias is not None and bias.data_type == onnx.TensorProto.FLOAT and len(bias.dims) == 1:
            layers.append(BiasedLayer(n.output[0], bias.name, adds[0].output[0]))
    return layers


def channel_means(model: onnx.ModelProto, tensors: list[str], images: ImageBatches, batch_size: int) -> dict[str, np.ndarray]:
    """Per-channel (last axis) mean of each tensor over the images."""
    from vitdeploy.runtime.sessions import open_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = open_session(probe.SerializeToString())
    name = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    count = 0
    for start in range(0, len(images), batch_size):
        outs = session.run(tensors, {name: images[start : start + batch_size]})
        for t, out in zip(tensors, outs, strict=True):
            flat = out.reshape(-1, out.shape[-1]).astype(np.float64)
            sums[t] = sums.get(t, 0.0) + flat.sum(0)
        count += int(np.prod(outs[0].shape[:-1]))
    return {t: s / count for t, s in sums.items()}


def own_bias(model: onnx.ModelProto, layer: BiasedLayer) -> onnx.TensorProto:
    """The layer's bias initializer, copied under a new name first if other nodes read it too.

    ONNX Runtime's optimizer merges identical initializers: freshly initialised zero biases end
    up as one tensor that every Add (and a LayerNorm) reads.
    """
    readers = [n for n in model.graph.node if layer.bias in n.input]
    bias = next(i for i in model.graph.initializer if i.name == layer.bias)
    if len(readers) == 1:
        return bias
    add = next(n for n in readers if layer.biased in n.output)
    own = onnx.TensorProto()
    own.CopyFrom(bias)
    own.name = f"{layer.output}_bias"
    model.graph.initializer.append(own)
    add.input[list(add.input).index(layer.bias)] = own.name
    return model.graph.initializer[-1]


def correct_biases(fp32: onnx.ModelProto, int8: onnx.ModelProto, images: ImageBatches, batch_size: int = 64) -> dict:
    """Shift the biases of `int8` in place; returns how many layers and the largest shift."""
    fp32_outputs = {o for n in fp32.graph.node for o in n.output}
    layers = [layer for layer in biased_layers(int8) if layer.biased in fp32_outputs]
    if not layers:
        return {"layers": 0}
    # Measured after the bias (the same FP32 bias in both models until corrected): probing the
    # MatMul's own output would keep ONNX Runtime from fusing it with the Add, and the fused
    # integer kernel is what runs.
    reference = channel_means(fp32, [layer.biased for layer in layers], images, batch_size)
    shifts = []
    for layer in layers:
        current = channel_means(int8, [layer.biased], images, batch_size)[layer.biased]
        shift = (reference[layer.biased] - current).astype(np.float32)
        bias = own_bias(int8, layer)
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + shift, bias.name))
        shifts.append(float(np.abs(shift).max()))
    return {"layers": len(layers), "max_abs_shift": max(shifts), "mean_abs_shift_max": float(np.mean(shifts))}
