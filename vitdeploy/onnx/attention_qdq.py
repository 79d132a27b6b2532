"""Quantizers for the attention products (q·kᵀ, attention·v), placed where q, k and v leave
their Linear layers.

ONNX Runtime's quantizer puts a MatMul's quantizers right at its inputs: for q·kᵀ that is after
the reshape to heads and the transposes, and unsigned with a zero point. OpenVINO runs the
attention block in INT8 when q, k and v are symmetric signed INT8 quantized ahead of those
data-movement ops (where NNCF's transformer preset puts its quantizers for q and k). Moving a
per-tensor Quantize/Dequantize pair up across Reshape and Transpose changes no value: the same
elements, the same scale. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from vitdeploy.onnx.graph import activation_matmuls

DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})
# Between the scores MatMul and its Softmax: the 1/sqrt(d) scale and an additive mask or bias.
SCALING = frozenset({"Mul", "Div", "Add", "Cast"})


@dataclass(frozen=True)
class Links:
    """Who writes and who reads each tensor of a graph."""

    producer: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> Links:
        producer = {out: node for node in graph.node for out in node.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        return cls(producer, readers)

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        nodes = self.readers.get(tensor, [])
        return nodes[0] if len(nodes) == 1 else None


def attention_matmuls(model: onnx.ModelProto, products: str) -> list[str]:
    """The attention products to quantize: "scores", the activation x activation MatMuls whose
    output reaches a Softmax through scaling only (q·kᵀ); "int8", those and the ones reading a
    Softmax's output (attention·v); "float", none."""
    if products == "float":
        return []
    links = Links.of(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    chosen = []
    for name in activation_matmuls(model):
        node = by_name[name]
        scores = _feeds_softmax(node.output[0], links)
        weighs_values = products == "int8" and any(_is_softmax_output(t, links) for t in node.input)
        if scores or weighs_values:
            chosen.append(name)
    return chosen


def _is_softmax_output(tensor: str, links: Links) -> bool:
    node = links.producer.get(tensor)
    return node is not None and node.op_type == "Softmax"


def symmetric_int8_overrides(model: onnx.ModelProto, matmuls: list[str]) -> dict[str, list[dict]]:
    """ONNX Runtime's per-tensor overrides making q, k and v (the inputs of `matmuls` other than a
    Softmax output) symmetric signed INT8. The Softmax output keeps the default, unsigned: its
    range starts at 0, so its zero point is 0.

    Why: with ONNX Runtime's default (unsigned, with a zero point) OpenVINO converts q and k back
    before the scores and gained nothing: ViT-S/16 at 224x224 ran at 0.91x / 0.93x the NNCF peer
    (batch 1 / 8) where the recipe without them ran at 0.94x / 0.92x. NNCF writes them symmetric."""
    from onnxruntime.quantization import QuantType

    links = Links.of(model.graph)
    wanted = set(matmuls)
    inputs = {
        name for node in model.graph.node if node.name in wanted for name in node.input if not _is_softmax_output(name, links)
    }
    return {name: [{"quant_type": QuantType.QInt8, "symmetric": True}] for name in sorted(inputs)}


def _feeds_softmax(tensor: str, links: Links, depth: int = 4) -> bool:
    for reader in links.readers.get(tensor, []):
        if reader.op_type == "Softmax":
            return True
        if depth and reader.op_type in SCALING and _feeds_softmax(reader.output[0], links, depth - 1):
            return True
    return False


def hoist_quantizers(model: onnx.ModelProto, matmuls: list[str]) -> int:
    """Move the Quantize/Dequantize pair at each input of `matmuls` up across the Reshape and
    Transpose nodes before it, to the tensor they start from; returns how many pairs moved.

    A pair moves only when it is per-tensor and each tensor on the way has one reader, so nothing
    else starts reading quantized values."""
    graph = model.graph
    links = Links.of(graph)
    scalars = {i.name for i in graph.initializer if math.prod(i.dims) == 1}
    wanted = set(matmuls)
    moved = sum(
        _hoist_input(links, scalars, node, index)
        for node in graph.node
        if node.name in wanted
        for index in range(len(node.input))
    )
    if moved:
        sort_topologically(graph)
    return moved


def _hoist_input(links: Links, scalars: set[str], matmul: onnx.NodeProto, index: int) -> bool:
    tensor = matmul.input[index]
    dequantize = links.producer.get(tensor)
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or links.only_reader(tensor) != matmul:
        return False
    quantize = links.producer.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or links.only_reader(quantize.output[0]) != dequantize:
        return False
    if not {quantize.input[1], dequantize.input[1]} <= scalars:  # per-tensor scales only
        return False
    chain = _movement_chain(links, quantize)
    if not chain:
        return False
    first, last = chain[-1], chain[0]  # the node nearest the start, the node feeding the quantizer
    start = first.input[0]
    quantize.input[0] = start
    first.input[0] = dequantize.output[0]
    matmul.input[index] = last.output[0]
    # The links this pass still reads: the start's readers, the chain's first input.
    links.readers[start] = [quantize if r == first else r for r in links.readers.get(start, [])]
    return True


def _movement_chain(links: Links, quantize: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The data-movement nodes feeding `quantize`, nearest first, each output read by the next alone."""
    chain: list[onnx.NodeProto] = []
    reader, tensor = quantize, quantize.input[0]
    while True:
        node = links.producer.get(tensor)
        if node is None or node.op_type not in DATA_MOVEMENT or links.only_reader(tensor) != reader:
            return chain
        chain.append(node)
        reader, tensor = node, node.input[0]


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph`'s nodes so each comes after what it reads, otherwise keeping their order."""
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting_on = [{producer[t] for t in node.input if t in producer} for node in nodes]
    dependents: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting_on):
        for j in needs:
            dependents.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in dependents.get(i, []):
            waiting_on[k].discard(i)
            if not waiting_on[k]:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    ordered = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(ordered)
