"""Facts about an ONNX graph: op counts, parameters, how much of the weight is INT8. Torch-free."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto

INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}
QUANT_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger",
    "QAttention", "QGemm", "DynamicQuantizeMatMul", "QLinearConv", "ConvInteger", "QLinearAdd",
    "QLinearMul", "QLinearSoftmax",
)  # fmt: skip


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return {k: v for k, v in op_counts(model).items() if k in QUANT_OPS}


def weight_stats(model: onnx.ModelProto) -> dict[str, float | int]:
    """Parameter count (initializer elements) and the share of them stored as 8-bit integers.

    Scales and zero points are counted too; they are a rounding error beside the weights.
    """
    total = int8 = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        total += n
        if init.data_type in INT8_TYPES:
            int8 += n
    return {"parameters": total, "int8_parameters": int8, "int8_share": int8 / total if total else 0.0}


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose both inputs are activations (attention q k^T and attn v)."""
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in weights for i in n.input)
    ]  # fmt: skip


def output_producers(model: onnx.ModelProto) -> list[str]:
    """Nodes that write a graph output: for a classifier, the head."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if outputs & set(n.output)]


PREPROCESS_KEY = "vitdeploy.preprocess"


def write_preprocess(model: onnx.ModelProto, preprocess: dict) -> None:
    """Store the preprocessing inside the ONNX file, so the artifact describes its own input."""
    for prop in list(model.metadata_props):
        if prop.key == PREPROCESS_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=PREPROCESS_KEY, value=json.dumps(preprocess, sort_keys=True))


def stamp_preprocess(path, preprocess: dict) -> None:
    from vitdeploy.core.storage import atomic_path

    model = onnx.load(str(path))
    write_preprocess(model, preprocess)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def token_count(model: onnx.ModelProto) -> int | None:
    """Tokens per image (class and distillation tokens included), from the position embedding a
    timm ViT exports as `pos_embed` (1, tokens, dim); None when the graph has none."""
    for tensor in model.graph.initializer:
        if tensor.name.endswith("pos_embed") and len(tensor.dims) == 3:
            return int(tensor.dims[1])
    return None


def read_preprocess(model: onnx.ModelProto):
    """(Preprocess, img_size) from the file's metadata; CIFAR-10 defaults if it has none."""
    from vitdeploy.recipe.schema import Preprocess

    meta = {p.key: p.value for p in model.metadata_props}
    if PREPROCESS_KEY not in meta:
        return Preprocess(), None
    from vitdeploy.core.contract import InputContract

    contract = InputContract.from_record(json.loads(meta[PREPROCESS_KEY]), f"the model's {PREPROCESS_KEY} metadata")
    pre = Preprocess(mean=contract.mean, std=contract.std, interpolation=contract.interpolation, crop_pct=contract.crop_pct)
    return pre, contract.size


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The `location` of every tensor stored outside the .onnx file."""
    locations = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            locations.append(entry.get("location", ""))
    return locations


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of a graph and every subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] if attr.HasField("g") else []:
                yield from _all_tensors(sub)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def load_checked(path) -> onnx.ModelProto:
    """An ONNX file read without trusting it: corrupt files and external data that would be read
    from outside the model's folder are refused with a UserError naming the file."""
    from pathlib import Path

    from vitdeploy.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    if path.suffix.lower() in {".yaml", ".yml"}:
        raise UserError(f"{path}: a recipe, not an ONNX model; give the .onnx file `vitdeploy build {path}` wrote")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise UserError(f"{path}: not a readable ONNX model; truncated or corrupt ({type(err).__name__})") from None
    if not model.graph.node or not model.graph.input:
        raise UserError(f"{path}: not a readable ONNX model (no graph)")
    folder = path.resolve().parent
    for location in external_data_files(model):
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UserError(f"{path}: external data {location!r} lies outside the model's folder; refused")
        if not target.is_file():
            raise UserError(f"{path}: external data file {location!r} is missing")
    return model
