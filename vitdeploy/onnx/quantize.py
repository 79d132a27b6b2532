"""ONNX Runtime INT8 quantization, dynamic and static, configured by the recipe.

The default quantizes only weight-bearing MatMul/Gemm nodes: Softmax outputs, LayerNorm
inputs, GELU outputs and residual Adds stay FP32 because their ranges ruin 8-bit ViTs, and
the activation x activation attention MatMuls (q k^T, attn v) are excluded because static
QDQ would quantize the Softmax between them (measured 10.3 ms vs 1.6 ms on vit_base b1).
`quantize.attention` quantizes them the way OpenVINO runs fast (`onnx/attention_qdq.py`): on
ViT-B/16 at 224x224, 1.10x / 1.11x NNCF's INT8 at batch 1 / 8 (OpenVINO, 2-core Intel Xeon).

Over 500 lines: ONNX Runtime's quantizer and what vitdeploy adds around it (calibration of only the
tensors read, scratch on the output's disk, dynamic nodes). The next split: calibration.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import MinMaxCalibrater, TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from vitdeploy.core.cpu import has_vnni
from vitdeploy.core.errors import UserError
from vitdeploy.core.memory import release_freed_memory
from vitdeploy.core.quiet import logger_level
from vitdeploy.core.storage import StorageError, atomic_path, require_space
from vitdeploy.data.datasets import ImageBatches
from vitdeploy.onnx import detached
from vitdeploy.onnx.attention_qdq import attention_matmuls, hoist_quantizers, symmetric_int8_overrides
from vitdeploy.onnx.bias_correction import correct_biases
from vitdeploy.onnx.graph import activation_matmuls, output_producers, quantized_op_counts, weight_stats
from vitdeploy.recipe.schema import QuantizeSpec

if TYPE_CHECKING:
    from vitdeploy.onnx.nncf_quantize import ValidationImages

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed float32 NCHW batches to ORT's calibrator; rewindable."""

    def __init__(self, input_name: str, images: ImageBatches, batch_size: int) -> None:
        self.input_name, self.images, self.batch_size = input_name, images, batch_size
        self._range = (0, len(self))
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        first, last = self._range
        for i in range(first, last):
            yield {self.input_name: self.images[i * self.batch_size : (i + 1) * self.batch_size]}

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to batches [start, end): ORT's strided MinMax calibrates chunk by chunk."""
        self._range = (start_index, min(end_index, len(self)))
        self._it = self._batches()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def resolve_reduce_range(spec: QuantizeSpec) -> bool:
    return (not has_vnni()) if spec.reduce_range == "auto" else bool(spec.reduce_range)


def reduce_range_reason(spec: QuantizeSpec, resolved: bool) -> str:
    if spec.reduce_range != "auto":
        return f"set to {resolved} by the recipe"
    return "auto: on, the CPU lacks VNNI" if resolved else "auto: off, the CPU has VNNI"


def nodes_to_exclude(model: onnx.ModelProto, spec: QuantizeSpec) -> list[str]:
    excluded = set(spec.exclude_nodes)
    # NNCF's transformer preset places the attention products' quantizers itself: on ViT-S/16,
    # kept out of its reach, its file ran at 0.86x / 0.95x its own default (OpenVINO, batch 1 / 8).
    if spec.weights_only_matmul and spec.backend != "nncf":
        excluded.update(set(activation_matmuls(model)) - set(attention_matmuls(model, spec.attention)))
    if spec.keep_classifier_fp32:
        excluded.update(output_producers(model))
    excluded.update(n.name for n in model.graph.node if n.op_type in spec.exclude_op_types)
    if spec.mode == "dynamic":
        # ORT's dynamic quantizer first rewrites every Gemm as MatMul (+ Add) named "<gemm>_MatMul",
        # then matches names: without these, an excluded Gemm (the classifier) is quantized anyway.
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
        excluded.update(f"{name}_MatMul" for name in excluded & gemms)
    return sorted(excluded)


@contextlib.contextmanager
def scratch_beside(target: Path) -> Iterator[str]:
    """A scratch folder next to `target`, also used by ONNX Runtime's quantizer for its own files.

    The quantizer writes typed and augmented copies of the model (for ViT-B/16, each several
    hundred MB) to `tempfile`'s folder; keeping them on the output's disk means a full disk is reported for
    the folder the user chose, and a small /tmp is never the limit. Removed on exit.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmpdir:
        tempfile.tempdir = tmpdir
        try:
            yield tmpdir
        finally:
            tempfile.tempdir = previous


def quantize_model(
    source: Path,
    target: Path,
    spec: QuantizeSpec,
    calibration: ArrayCalibrationReader | None = None,
    correction_images: ImageBatches | None = None,
    validation: ValidationImages | None = None,
) -> dict:
    """Quantize `source` into `target` atomically; return what was done, for the manifest.

    `correction_images` (preprocessed, NCHW) feed `spec.bias_correction`; `validation`, NNCF's
    accuracy control (`spec.nncf_max_drop`)."""
    if spec.backend == "nncf":
        from vitdeploy.onnx.nncf_quantize import quantize_with_nncf

        if calibration is None:
            raise ValueError("static quantization needs calibration data")
        model = onnx.load(str(source))  # read once: for the nodes left in float, then by NNCF
        excluded = nodes_to_exclude(model, spec)
        return quantize_with_nncf(model, target, spec, calibration.images, calibration.input_name, excluded, validation)
    # Shape inference writes two copies of the model (and a little more) without reporting a
    # full disk; measured: 2.2x the FP32 file free is enough.
    needed = 5 * source.stat().st_size // 2
    require_space(target.parent, needed, f"quantizing {source.name}")
    with scratch_beside(target) as tmpdir:
        # Symbolic shape inference types the tensors around ORT's fused contrib ops
        # (SkipLayerNormalization, BiasGelu, Attention); without it the quantizer skips
        # every MatMul that follows one of them.
        typed = Path(tmpdir) / "typed.onnx"
        try:
            infer_types(source, typed)
        except DecodeError:  # its own copy, cut short by a disk that filled while it wrote (the
            # source is ours and was just read by ONNX Runtime); its scratch is gone by now
            raise StorageError(
                f"no space left in {target.parent} while quantizing {source.name}: ONNX's shape inference "
                f"wrote a truncated copy; it needs about {needed / 1e6:.1f} MB free"
            ) from None
        release_freed_memory()  # shape inference's copies of the graph, before calibration starts
        with logger_level(logging.ERROR):  # the quantizer warns on the root logger
            return {"backend": "onnxruntime"} | _quantize(typed, target, spec, calibration, correction_images)


def infer_types(source: Path, target: Path) -> None:
    """`source` with the shapes and types of its tensors annotated, as `target`.

    Inferred on the graph with its linear weights set aside (`onnx.detached`): for ViT-B/16 at
    224x224 that took its peak from 1.9 GB to 1.3 GB (2-core Intel Xeon)."""
    model = onnx.load(str(source))
    weights = detached.detach_weights(model)
    graph_only = target.with_name(f"{target.stem}.graph.onnx")
    quant_pre_process(model, str(graph_only), skip_optimization=True, auto_merge=True)
    del model
    typed = onnx.load(str(graph_only))
    graph_only.unlink()
    detached.attach_weights(typed, weights)
    onnx.save(typed, str(target))


def _quantize(
    source: Path, target: Path, spec: QuantizeSpec, calibration: ArrayCalibrationReader | None, images: ImageBatches | None
) -> dict:
    graph = onnx.load(str(source), load_external_data=False)
    excluded = nodes_to_exclude(graph, spec)
    products = attention_matmuls(graph, spec.attention) if spec.mode == "static" else []
    if spec.mode == "static" and spec.attention != "float" and not products:
        raise UserError(
            f"quantize.attention is {spec.attention}, but {source.name} has no attention MatMuls: ONNX Runtime's "
            "fused Attention operator computes them inside; leave optimize.fuse_attention at auto"
        )
    overrides = symmetric_int8_overrides(graph, products) if products else {}
    del graph
    op_types = [t for t in spec.op_types if t not in spec.exclude_op_types]
    check_op_types(op_types, spec.mode)
    reduce_range = resolve_reduce_range(spec)
    with atomic_path(target) as tmp, quantizer_errors(source):
        if spec.mode == "dynamic":
            quantize_dynamic(
                str(source),
                str(tmp),
                op_types_to_quantize=op_types,
                per_channel=spec.per_channel,
                reduce_range=reduce_range,
                weight_type=QUANT_TYPES[spec.weight_type],
                nodes_to_exclude=excluded,
            )
        elif spec.mode == "static":
            if calibration is None:
                raise ValueError("static quantization needs calibration data")
            ranges = source.with_name("ranges.json")
            static_excluded = sorted({*excluded, *spec.dynamic_nodes})
            save_tensors_data(calibrate(source, spec, op_types, calibration, static_excluded), ranges)
            quantize_with_ranges(source, tmp, spec, ranges, static_excluded, overrides=overrides)
            if spec.dynamic_nodes:
                quantize_nodes_dynamically(tmp, spec, reduce_range)
        else:
            raise ValueError(f"nothing to quantize in mode {spec.mode!r}")
        quantized = onnx.load(str(tmp))
        moved = hoist_quantizers(quantized, products) if products else 0
        # Shape annotations from symbolic inference are only for the quantizer; ORT re-infers them.
        del quantized.graph.value_info[:]
        stored = store_weights_int8(quantized, keep=set(excluded)) if spec.store_other_weights_int8 else []
        drop_zero_weight_zero_points(quantized)
        corrected = None
        if spec.bias_correction:  # last: against the graph exactly as it will run
            if images is None:
                raise ValueError("bias correction needs calibration images")
            batch = calibration.batch_size if calibration else spec.calibration.batch_size or 32
            corrected = correct_biases(onnx.load(str(source)), quantized, images, batch)
        onnx.save(quantized, str(tmp))
    return {
        "bias_correction": corrected,
        "mode": spec.mode,
        "format": spec.format if spec.mode == "static" else "qoperator",
        "op_types": op_types,
        "excluded_nodes": excluded,
        **({"dynamic_nodes": spec.dynamic_nodes} if spec.dynamic_nodes else {}),
        **({"attention": {"products": spec.attention, "matmuls": len(products), "quantizers_moved": moved}} if products else {}),
        "per_channel": spec.per_channel,
        "quantize_outputs": spec.quantize_outputs if spec.mode == "static" else False,
        "reduce_range": reduce_range,
        "reduce_range_reason": reduce_range_reason(spec, reduce_range),
        "activation_type": "uint8" if spec.mode == "dynamic" else spec.activation_type,
        "weight_type": spec.weight_type,
        "calibration": spec.calibration.model_dump() | {"images": len(calibration.images), "batch_size": calibration.batch_size}
        if calibration
        else None,
        "weights_stored_int8": stored,
        "quantized_ops": quantized_op_counts(quantized),
        "weights": weight_stats(quantized),
    }


def quantize_with_ranges(
    source: Path,
    target: Path,
    spec: QuantizeSpec,
    ranges: Path,
    excluded: list[str],
    only: list[str] | None = None,
    overrides: dict[str, list[dict]] | None = None,
) -> None:
    """Static INT8 of `source` (typed by `infer_types`) into `target`, from ranges `calibrate` wrote.

    `only`: quantize these nodes alone (per-layer sensitivity), else every node of the spec's op
    types but `excluded`; `overrides`: ONNX Runtime's per-tensor quantization overrides."""
    require_calibration_cache()
    op_types = [t for t in spec.op_types if t not in spec.exclude_op_types]
    quantize_static(
        str(source),
        str(target),
        None,  # the ranges are read from `ranges`
        quant_format=FORMATS[spec.format],
        op_types_to_quantize=op_types,
        per_channel=spec.per_channel,
        reduce_range=resolve_reduce_range(spec),
        activation_type=QUANT_TYPES[spec.activation_type],
        weight_type=QUANT_TYPES[spec.weight_type],
        nodes_to_quantize=only,
        nodes_to_exclude=excluded,
        calibrate_method=CALIBRATION_METHODS[spec.calibration.method],
        extra_options=_output_options(spec, op_types) | ({"TensorQuantOverrides": overrides} if overrides else {}),
        calibration_cache_path=str(ranges),
    )


def quantize_nodes_dynamically(model: Path, spec: QuantizeSpec, reduce_range: bool) -> None:
    """`spec.dynamic_nodes` of the static INT8 `model` quantized dynamically, in place.

    The static pass left them in float; ONNX Runtime's dynamic quantizer then turns each into
    DynamicQuantizeLinear + MatMulInteger (its tensors lost their types with the static pass,
    so float is their default type)."""
    staged = model.with_name(f"{model.name}.dynamic.tmp")  # a temporary: swept if the build is killed
    quantize_dynamic(
        str(model),
        str(staged),
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=spec.dynamic_nodes,
        per_channel=spec.per_channel,
        reduce_range=reduce_range,
        weight_type=QUANT_TYPES[spec.weight_type],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    staged.replace(model)


def require_calibration_cache() -> None:
    """Static INT8 hands the quantizer ranges calibrated beforehand, which ONNX Runtime reads
    from version 1.32 (`quantize_static(calibration_cache_path=...)`)."""
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise UserError(
            f"static quantization needs onnxruntime 1.32 or newer (installed: {onnxruntime.__version__}); "
            "pip install -U onnxruntime"
        )


def calibrate(
    source: Path, spec: QuantizeSpec, op_types: list[str], reader: ArrayCalibrationReader, excluded: list[str] | None = None
) -> TensorsData:
    """The ranges of every tensor the quantizer will read, from the calibration images.

    Why on its own: ONNX Runtime's `quantize_static` loads the model, then calibrates with it
    still in memory. Calibrating first, with nothing else loaded, and handing the quantizer the
    ranges took the peak of a ViT-B/16 quantization (512 images, 224x224, alone in a process)
    from 3.0 GB to 2.3 GB (2-core Intel Xeon). Only each batch's minimum and maximum are kept,
    so the count of images changes the time, not the memory.

    `excluded`: nodes left in float, whose tensors MinMax then does not measure (below).
    """
    cal = spec.calibration
    stride = cal.minmax_stride_batches
    if stride and len(reader) % stride:
        raise UserError(
            f"quantize.calibration.minmax_stride_batches ({stride}) must divide the number of "
            f"calibration batches ({len(reader)} = {len(reader.images)} images / {reader.batch_size})"
        )
    augmented = source.with_name("augmented.onnx")
    if cal.method == "minmax" and excluded is not None:
        calibrator = ReadTensorsMinMax(source, op_types, tensors_read(source, op_types, excluded, spec), augmented)
    else:
        options = {"percentile": cal.percentile} if cal.method == "percentile" else {}
        calibrator = create_calibrator(
            source,
            op_types,
            augmented_model_path=str(augmented),
            calibrate_method=CALIBRATION_METHODS[cal.method],
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
    source.with_name("augmented.onnx").unlink(missing_ok=True)  # the session holds what it needs
    step = stride or max(1, len(reader))
    for start in range(0, len(reader), step):
        reader.set_range(start, start + step)
        calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator
    release_freed_memory()
    return ranges


class ReadTensorsMinMax(MinMaxCalibrater):
    """ONNX Runtime's MinMax calibrator, measuring only the tensors the quantizer reads.

    ONNX Runtime measures every input and output of every node of the quantized op types: on
    ViT-S/16, 194 tensors (the attention-score MatMuls' and the outputs that stay float among
    them) where the quantizer reads 48. Each measured tensor is a graph output of the calibration
    session, which made it 1.9x slower than the plain passes (4.3 s against 2.3 s for 48 images
    at 224x224, 2-core Intel Xeon); measuring only the 48, ViT-S/16's quantize step takes 1.6x
    its bare calibration passes (26 s for 16 s) where it took 2.2x (27 s for 12 s). The ranges of
    the tensors read are the same numbers, and the files the same bytes."""

    def __init__(self, source: Path, op_types: list[str], tensors: set[str], augmented: Path) -> None:
        super().__init__(str(source), op_types, str(augmented))
        self.tensors = tensors
        self.augment_graph()
        self.execution_providers = ["CPUExecutionProvider"]
        self.create_inference_session()

    def select_tensors_to_calibrate(self, model: onnx.ModelProto) -> tuple[set[str], dict]:
        tensors, value_infos = super().select_tensors_to_calibrate(model)
        return tensors & self.tensors, value_infos


def tensors_read(source: Path, op_types: list[str], excluded: list[str], spec: QuantizeSpec) -> set[str]:
    """The activations static quantization of `source` reads ranges for: the inputs of every node
    of `op_types` not `excluded` (and their outputs with `quantize_outputs`)."""
    model = onnx.load(str(source), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    read: set[str] = set()
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in excluded:
            read.update(name for name in node.input if name and name not in weights)
            if spec.quantize_outputs:
                read.update(node.output)
    return read


def _output_options(spec: QuantizeSpec, op_types: list[str]) -> dict:
    # Our consumers of MatMul outputs (bias+GELU, residual Add, LayerNorm) stay FP32, so a Q/DQ
    # pair there only costs a requantization and a dequantization per MatMul.
    return {} if spec.quantize_outputs else {"OpTypesToExcludeOutputQuantization": list(op_types)}


def store_weights_int8(model: onnx.ModelProto, keep: set[str], min_elements: int = 256) -> list[str]:
    """Store each remaining FP32 weight matrix (>= 2-D, >= `min_elements`) as symmetric INT8 + DequantizeLinear.

    Weight-only: the consumers still compute in FP32 on the dequantized tensor. ORT keeps such a
    DequantizeLinear as a node (its constant folding leaves Q/DQ alone): for the pos-embed and
    patch weights of the reference model that cost ~60 us per run (2 % at batch 1) for 64 kB. One scale per channel of axis 0,
    or of the last axis when axis 0 has length 1 (the pos-embed). Initializers read by a node
    in `keep` (the nodes excluded from quantization, the classifier among them) are left alone.
    Returns the names that were converted.
    """
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_inputs = {i.name for i in graph.input}
    converted, new_nodes = [], []
    for init in list(graph.initializer):
        users = readers.get(init.name, [])
        if (
            init.data_type != onnx.TensorProto.FLOAT
            or len(init.dims) < 2  # biases and norm parameters: per-channel scales would not save anything
            or int(np.prod(init.dims)) < min_elements
            or init.name in graph_inputs
            or not users
            or any(u.name in keep or u.op_type == "DequantizeLinear" for u in users)
        ):
            continue
        weight = numpy_helper.to_array(init)
        axis = 0 if weight.shape[0] > 1 else weight.ndim - 1
        reduce = tuple(d for d in range(weight.ndim) if d != axis)
        scale = np.maximum(np.abs(weight).max(axis=reduce), np.finfo(np.float32).tiny) / 127
        shape = [1] * weight.ndim
        shape[axis] = -1
        q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        stored, scales = f"{init.name}_int8", f"{init.name}_scale"
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(q, stored), numpy_helper.from_array(scale.astype(np.float32), scales)])
        name = f"{init.name}_weight_only"
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [stored, scales], [init.name], name=name, axis=axis))
        converted.append(init.name)
    # DequantizeLinear nodes read only initializers, so putting them first keeps the graph sorted.
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def drop_zero_weight_zero_points(model: onnx.ModelProto) -> int:
    """Remove the all-zero INT8 zero points of weight DequantizeLinear nodes (0 is the default).

    Symmetric INT8 weights always have zero point 0; ORT's quantizer still stores one per
    channel. Returns how many zero-point tensors were dropped.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    dropped: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero_point = inits.get(node.input[0]), inits.get(node.input[2])
        if (
            weight is not None
            and zero_point is not None
            and zero_point.data_type == onnx.TensorProto.INT8
            and not numpy_helper.to_array(zero_point).any()
        ):
            dropped.add(node.input[2])
            del node.input[2]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for name in dropped - used:
        graph.initializer.remove(inits[name])
    return len(dropped)


@contextlib.contextmanager
def quantizer_errors(source: Path) -> Iterator[None]:
    """ONNX Runtime's quantizer reports bad input with ValueError/KeyError/RuntimeError: make those messages."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError, RuntimeError, AssertionError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{source.name}: ONNX Runtime's quantizer refused it ({type(err).__name__}: {first})") from None


def check_op_types(op_types: list[str], mode: str) -> None:
    """Op types ONNX Runtime's quantizer has no rule for would be skipped without a word."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    known = set(IntegerOpsRegistry) | set(QDQRegistry) | set(QLinearOpsRegistry)
    unknown = [t for t in op_types if t not in known]
    if unknown:
        raise UserError(
            f"quantize.op_types: ONNX Runtime cannot quantize {', '.join(unknown)} (mode {mode}); "
            f"it can: {', '.join(sorted(known))}"
        )
