"""Quantization building blocks on a real exported ViT graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vitdeploy.onnx.bias_correction import biased_layers, channel_means
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.graph import activation_matmuls, output_producers
from vitdeploy.onnx.quantize import ArrayCalibrationReader, quantize_model, resolve_reduce_range
from vitdeploy.recipe.schema import CalibrationSpec, ExportSpec, OptimizeSpec, QuantizeSpec
from vitdeploy.torch.export import INPUT_NAME, export_onnx

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit")
    raw = export_onnx(tiny_vit(), ExportSpec(), 32, folder / "raw.onnx")
    fused = folder / "fused.onnx"
    stats = optimize_transformer(raw, fused, OptimizeSpec(), 3, 48, fuse_attention=False)
    assert stats["fused_operators"]["SkipLayerNormalization"] == 4  # two per block
    return fused


def scales(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name.endswith("_scale")}


def test_attention_score_matmuls_and_head_are_found(vit_onnx: Path) -> None:
    model = onnx.load(str(vit_onnx))
    assert len(activation_matmuls(model)) == 4  # q k^T and attn v, two blocks
    assert len(output_producers(model)) == 1


def test_calibration_reader_ranges() -> None:
    reader = ArrayCalibrationReader("x", np.zeros((10, 3, 2, 2), np.float32), 4)
    assert len(reader) == 3
    assert [len(b["x"]) for b in iter(reader.get_next, None)] == [4, 4, 2]
    reader.set_range(1, 2)
    assert [len(b["x"]) for b in iter(reader.get_next, None)] == [4]


def test_strided_minmax_equals_unbounded_minmax(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    full = QuantizeSpec(mode="static")
    strided = QuantizeSpec(mode="static", calibration=CalibrationSpec(minmax_stride_batches=2))
    quantize_model(vit_onnx, tmp_path / "a.onnx", full, ArrayCalibrationReader(INPUT_NAME, x, 16))
    quantize_model(vit_onnx, tmp_path / "b.onnx", strided, ArrayCalibrationReader(INPUT_NAME, x, 16))
    a, b = scales(tmp_path / "a.onnx"), scales(tmp_path / "b.onnx")
    assert a.keys() == b.keys() and len(a) > 8
    assert all(np.allclose(a[k], b[k]) for k in a)


def test_default_static_config_quantizes_weights_only(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((32, 3, 32, 32)).astype(np.float32)
    report = quantize_model(vit_onnx, tmp_path / "q.onnx", QuantizeSpec(mode="static"), ArrayCalibrationReader(INPUT_NAME, x, 16))
    model = onnx.load(str(tmp_path / "q.onnx"))
    # Every Softmax reads an FP32 tensor: nothing quantizes the attention scores.
    producers = {o: n for n in model.graph.node for o in n.output}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2  # one per block of the unfused test model
    assert all(producers[n.input[0]].op_type != "DequantizeLinear" for n in softmaxes)
    assert report["weights"]["int8_share"] > 0.8


def test_reduce_range_auto_follows_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    import vitdeploy.onnx.quantize as q

    for has_vnni in (True, False):
        monkeypatch.setattr(q, "has_vnni", lambda has_vnni=has_vnni: has_vnni)
        assert resolve_reduce_range(QuantizeSpec(mode="static", reduce_range="auto")) is (not has_vnni)
        assert resolve_reduce_range(QuantizeSpec(mode="static", reduce_range=False)) is False
        assert resolve_reduce_range(QuantizeSpec(mode="static", reduce_range=True)) is True


def test_static_matmul_outputs_stay_fp32_by_default(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((32, 3, 32, 32)).astype(np.float32)
    for quantize_outputs in (False, True):
        spec = QuantizeSpec(mode="static", quantize_outputs=quantize_outputs)
        quantize_model(vit_onnx, tmp_path / "q.onnx", spec, ArrayCalibrationReader(INPUT_NAME, x, 16))
        model = onnx.load(str(tmp_path / "q.onnx"))
        readers = {i: n for n in model.graph.node for i in n.input}
        matmul_outputs = [n.output[0] for n in model.graph.node if n.op_type == "MatMul" and "attn/q/" in n.name]
        assert matmul_outputs
        assert any(readers[o].op_type == "QuantizeLinear" for o in matmul_outputs) == quantize_outputs


def test_leftover_weights_are_stored_int8_and_computed_fp32(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)
    plain, stored = tmp_path / "plain.onnx", tmp_path / "stored.onnx"
    quantize_model(vit_onnx, plain, QuantizeSpec(mode="dynamic", store_other_weights_int8=False))
    report = quantize_model(vit_onnx, stored, QuantizeSpec(mode="dynamic"))
    assert set(report["weights_stored_int8"]) == {"pos_embed", "patch_embed.proj.weight"}  # not the classifier
    model = onnx.load(str(stored))
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["pos_embed_int8"].data_type == onnx.TensorProto.INT8 and "pos_embed" not in inits
    # The classifier stays FP32 (dynamic mode rewrites its Gemm as MatMul on a transposed copy).
    head = [i for name, i in inits.items() if name.startswith("head.weight")]
    assert head and all(i.data_type == onnx.TensorProto.FLOAT for i in head)
    onnx.checker.check_model(model, full_check=True)
    assert stored.stat().st_size < plain.stat().st_size - 3 * 48 * 8 * 8  # the Conv weight alone shrinks by 3/4

    import onnxruntime as ort

    def logits(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]

    a, b = logits(plain), logits(stored)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()  # 8-bit weight rounding, nothing more


def test_weight_zero_points_are_dropped_without_changing_outputs(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((16, 3, 32, 32)).astype(np.float32)
    quantize_model(vit_onnx, tmp_path / "q.onnx", QuantizeSpec(mode="static"), ArrayCalibrationReader(INPUT_NAME, x, 16))
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dqs and all(len(n.input) == 2 for n in weight_dqs)
    # Put explicit zeros back: the outputs must not change by a single bit.
    explicit = onnx.load(str(tmp_path / "q.onnx"))
    int8_weights = {name for name, i in inits.items() if i.data_type == onnx.TensorProto.INT8}
    for node in explicit.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights:
            scale = numpy_helper.to_array(inits[node.input[1]])
            zero = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{node.name}_zp")
            explicit.graph.initializer.append(zero)
            node.input.append(zero.name)
    onnx.save(explicit, str(tmp_path / "explicit.onnx"))
    import onnxruntime as ort

    def logits(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]

    np.testing.assert_array_equal(logits(tmp_path / "q.onnx"), logits(tmp_path / "explicit.onnx"))


def test_bias_correction_brings_int8_channel_means_to_fp32(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    cal = CalibrationSpec(samples=48, batch_size=16)
    plain = tmp_path / "plain.onnx"
    quantize_model(vit_onnx, plain, QuantizeSpec(mode="static", calibration=cal), ArrayCalibrationReader(INPUT_NAME, x, 16))
    corrected = tmp_path / "corrected.onnx"
    spec = QuantizeSpec(mode="static", calibration=cal, bias_correction=True)
    report = quantize_model(vit_onnx, corrected, spec, ArrayCalibrationReader(INPUT_NAME, x, 16), correction_images=x)
    layers = [layer.biased for layer in biased_layers(onnx.load(str(plain)))]
    assert report["bias_correction"]["layers"] == len(layers) >= 2
    reference = channel_means(onnx.load(str(vit_onnx)), layers, x, 16)

    def error(path: Path) -> float:
        means = channel_means(onnx.load(str(path)), layers, x, 16)
        return float(np.mean([np.abs(means[t] - reference[t]).mean() for t in layers]))

    assert error(corrected) < 0.2 * error(plain)


def test_minmax_ranges_do_not_depend_on_the_calibration_batch(vit_onnx: Path, tmp_path: Path) -> None:
    """Why large models may calibrate one image at a time: the artifact is the same file."""
    from vitdeploy.core.batching import calibration_batch

    x = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    spec = QuantizeSpec(mode="static", calibration=CalibrationSpec(samples=48))
    assert calibration_batch(65) == 32 and calibration_batch(197) == 1
    assert calibration_batch(197, asked=8) == 8
    outputs = []
    for batch in (1, 16):
        out = tmp_path / f"b{batch}.onnx"
        report = quantize_model(vit_onnx, out, spec, ArrayCalibrationReader(INPUT_NAME, x, batch))
        assert report["calibration"]["batch_size"] == batch
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_nodes_named_dynamic_are_quantized_per_batch_and_the_rest_statically(vit_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(4).standard_normal((32, 3, 32, 32)).astype(np.float32)
    fc = [n.name for n in onnx.load(str(vit_onnx)).graph.node if n.op_type == "MatMul" and "mlp/fc" in n.name]
    assert len(fc) == 4  # fc1 and fc2 of two blocks
    spec = QuantizeSpec(mode="static", dynamic_nodes=fc[:2])
    report = quantize_model(vit_onnx, tmp_path / "q.onnx", spec, ArrayCalibrationReader(INPUT_NAME, x, 16))
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    producers = {o: n for n in model.graph.node for o in n.output}
    static = [n for n in model.graph.node if n.op_type == "MatMul" and n.name in fc[2:]]
    assert len(static) == 2 and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in static)
    assert report["dynamic_nodes"] == fc[:2] and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    want = ort.InferenceSession(str(vit_onnx)).run(None, {INPUT_NAME: x[:8]})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {INPUT_NAME: x[:8]})[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_dynamic_nodes_are_a_static_option() -> None:
    with pytest.raises(ValueError, match=r"dynamic_nodes \(static only\)"):
        QuantizeSpec(mode="dynamic", dynamic_nodes=["a"])


def test_calibrating_only_the_tensors_read_gives_the_same_ranges_and_file(vit_onnx: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization.calibrate import save_tensors_data

    from vitdeploy.onnx.quantize import calibrate, infer_types, nodes_to_exclude, quantize_with_ranges, tensors_read

    x = np.random.default_rng(5).standard_normal((24, 3, 32, 32)).astype(np.float32)
    spec, typed = QuantizeSpec(mode="static"), tmp_path / "typed.onnx"
    infer_types(vit_onnx, typed)
    excluded, ops = nodes_to_exclude(onnx.load(str(typed)), spec), ["MatMul", "Gemm"]
    every = calibrate(typed, spec, ops, ArrayCalibrationReader(INPUT_NAME, x, 8))
    read = calibrate(typed, spec, ops, ArrayCalibrationReader(INPUT_NAME, x, 8), excluded)
    assert set(read.data) == tensors_read(typed, ops, excluded, spec) and len(read.data) < len(every.data) / 2
    assert all(np.array_equal(read.data[k].range_value, every.data[k].range_value) for k in read.data)
    files = []
    for name, ranges in (("every", every), ("read", read)):
        save_tensors_data(ranges, tmp_path / f"{name}.json")
        quantize_with_ranges(typed, tmp_path / f"{name}.onnx", spec, tmp_path / f"{name}.json", excluded)
        files.append((tmp_path / f"{name}.onnx").read_bytes())
    assert files[0] == files[1]


def quantized_inputs(model: onnx.ModelProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The QuantizeLinear nodes whose values reach `node`'s inputs through Dequantize and data movement."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for tensor in node.input:
        while tensor in producers and producers[tensor].op_type in {"DequantizeLinear", "Reshape", "Transpose"}:
            tensor = producers[tensor].input[0]
        if tensor in producers and producers[tensor].op_type == "QuantizeLinear":
            found.append(producers[tensor])
    return found


def test_attention_int8_quantizes_q_k_v_symmetric_where_they_leave_their_linear_layers(vit_onnx: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(6).standard_normal((16, 3, 32, 32)).astype(np.float32)
    spec = QuantizeSpec(mode="static", attention="int8")
    report = quantize_model(vit_onnx, tmp_path / "q.onnx", spec, ArrayCalibrationReader(INPUT_NAME, x, 8))
    assert report["attention"] == {"products": "int8", "matmuls": 4, "quantizers_moved": 6}  # q, k, v of two blocks
    model = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    products = [n for n in model.graph.node if n.name in activation_matmuls(onnx.load(str(vit_onnx)))]
    for product in products:
        quantizers = quantized_inputs(model, product)
        assert len(quantizers) == 2  # both operands, the Softmax output among them for attention·v
        for q in quantizers:
            start = producers[q.input[0]].op_type
            zero_point = inits[q.input[2]]
            if start == "Softmax":
                assert zero_point.dtype == np.uint8 and zero_point == 0
            else:  # q, k or v, as the Linear layer (its bias Add) wrote it, before the reshape to heads
                assert start == "Add" and zero_point.dtype == np.int8 and zero_point == 0
    onnx.checker.check_model(model)  # still in topological order


def test_moving_the_attention_quantizers_changes_no_output(vit_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import save_tensors_data

    from vitdeploy.onnx.attention_qdq import attention_matmuls, hoist_quantizers, symmetric_int8_overrides
    from vitdeploy.onnx.quantize import calibrate, infer_types, nodes_to_exclude, quantize_with_ranges

    x = np.random.default_rng(7).standard_normal((16, 3, 32, 32)).astype(np.float32)
    spec, typed = QuantizeSpec(mode="static", attention="int8"), tmp_path / "typed.onnx"
    infer_types(vit_onnx, typed)
    graph = onnx.load(str(typed))
    excluded, products = nodes_to_exclude(graph, spec), attention_matmuls(graph, "int8")
    save_tensors_data(
        calibrate(typed, spec, ["MatMul", "Gemm"], ArrayCalibrationReader(INPUT_NAME, x, 8), excluded), tmp_path / "r.json"
    )
    at_inputs = tmp_path / "at_inputs.onnx"
    quantize_with_ranges(
        typed, at_inputs, spec, tmp_path / "r.json", excluded, overrides=symmetric_int8_overrides(graph, products)
    )
    moved = onnx.load(str(at_inputs))
    assert hoist_quantizers(moved, products) == 6
    onnx.save(moved, str(tmp_path / "moved.onnx"))

    def logits(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {INPUT_NAME: x})[0]

    np.testing.assert_allclose(logits(tmp_path / "moved.onnx"), logits(at_inputs), rtol=0, atol=1e-5)


def test_attention_int8_needs_the_attention_matmuls_and_qdq(vit_onnx: Path, tmp_path: Path) -> None:
    from vitdeploy.core.errors import UserError

    with pytest.raises(ValueError, match="needs format qdq"):
        QuantizeSpec(mode="static", attention="scores", format="qoperator")
    with pytest.raises(ValueError, match="attention"):
        QuantizeSpec(mode="static", attention="int8", backend="nncf")
    fused = tmp_path / "fused.onnx"
    raw = export_onnx(tiny_vit(), ExportSpec(), 32, tmp_path / "raw.onnx")
    optimize_transformer(raw, fused, OptimizeSpec(), 3, 48, fuse_attention=True)
    x = np.zeros((8, 3, 32, 32), np.float32)
    with pytest.raises(UserError, match=r"no attention MatMuls.*fuse_attention"):
        quantize_model(
            fused, tmp_path / "q.onnx", QuantizeSpec(mode="static", attention="int8"), ArrayCalibrationReader(INPUT_NAME, x, 8)
        )
