"""How much faster can INT8 make this model's matrix multiplies on this CPU, with ORT's own kernels?

    python benchmarks/gemm_ceiling.py [--tokens 65] [--dim 192] [--hidden 384] [--threads 2]

Times the reference ViT's four linear shapes (qkv, proj, fc1, fc2; tokens = batch x 65 rows) as
the operators the artifacts actually run, in the same ORT CPU session settings as `vitdeploy bench`:
FP32 `MatMul`, `DynamicQuantizeMatMul` (dynamic INT8: the activation is quantized inside the
call), and `MatMulIntegerToFloat` fed an already-quantized uint8 activation (the kernel alone: the
best case, as if the activation arrived quantized for free). The FLOP-weighted ratio over the four
shapes bounds the whole-model INT8 speedup unless the INT8 graph also drops work the FP32 graph
keeps. Each op is replicated `--copies` times in one graph so per-run overhead does not dominate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

KINDS = ("fp32 MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat (u8 in)")


def graph(kind: str, rows: int, k: int, n: int, copies: int, rng: np.random.Generator) -> bytes:
    x_type = TensorProto.UINT8 if kind.startswith("MatMulIntegerToFloat") else TensorProto.FLOAT
    nodes, inits, outputs = [], [], []
    for i in range(copies):
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        scale = (np.abs(w).max(0) / 127).astype(np.float32)
        w_int8 = np.round(w / scale).astype(np.int8)
        y = f"y{i}"
        if kind == "fp32 MatMul":
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
        elif kind == "DynamicQuantizeMatMul":
            inits += [numpy_helper.from_array(w_int8, f"w{i}"), numpy_helper.from_array(scale, f"s{i}")]
            nodes.append(helper.make_node("DynamicQuantizeMatMul", ["x", f"w{i}", f"s{i}"], [y], domain="com.microsoft"))
        else:
            inits += [
                numpy_helper.from_array(w_int8, f"w{i}"),
                numpy_helper.from_array(np.float32(0.02), f"xs{i}"),
                numpy_helper.from_array(scale, f"s{i}"),
                numpy_helper.from_array(np.uint8(128), f"xz{i}"),
            ]
            nodes.append(
                helper.make_node("MatMulIntegerToFloat", ["x", f"w{i}", f"xs{i}", f"s{i}", f"xz{i}"], [y], domain="com.microsoft")
            )
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "gemms", [helper.make_tensor_value_info("x", x_type, [rows, k])], outputs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def median_seconds(model: bytes, feed: np.ndarray, threads: int, duration_s: float) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, {"x": feed})
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < duration_s or len(times) < 20:
        t0 = time.perf_counter()
        session.run(None, {"x": feed})
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--copies", type=int, default=6, help="one per transformer block")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per (shape, op, batch); kinds alternate")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is kept")
    args = ap.parse_args()
    d, h = args.dim, args.hidden
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, h), "fc2": (h, d)}
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.repeats} alternating repeats")
    for batch in (int(b) for b in args.batches.split(",")):
        rows = batch * args.tokens
        totals = dict.fromkeys(KINDS, 0.0)
        print(f"\nbatch {batch} ({rows} rows)   " + "   ".join(f"{k:>30}" for k in KINDS))
        for name, (k, n) in shapes.items():
            x = rng.standard_normal((rows, k)).astype(np.float32)
            feeds = {kind: (np.clip(x / 0.02 + 128, 0, 255).astype(np.uint8) if "u8" in kind else x) for kind in KINDS}
            models = {kind: graph(kind, rows, k, n, args.copies, rng) for kind in KINDS}
            runs: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.repeats):  # alternate so the VM's drift hits every kind alike
                for kind in KINDS:
                    runs[kind].append(median_seconds(models[kind], feeds[kind], args.threads, args.duration))
            secs = {kind: float(np.median(v)) for kind, v in runs.items()}
            flops = 2 * rows * k * n * args.copies
            for kind in KINDS:
                totals[kind] += secs[kind]
            cells = [
                f"{secs[kind] * 1e6 / args.copies:7.0f} us {flops / secs[kind] / 1e9:4.0f} GOP/s "
                f"{secs['fp32 MatMul'] / secs[kind]:4.2f}x"
                for kind in KINDS
            ]
            print(f"  {name:5} {k:4}x{n:<4}         " + "   ".join(cells))
        base = totals["fp32 MatMul"]
        print("  all four (time-weighted)   " + "   ".join(f"{base / totals[kind]:>29.2f}x" for kind in KINDS))


if __name__ == "__main__":
    main()
