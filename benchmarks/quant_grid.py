"""Accuracy (and optionally speed) of INT8 variants of one recipe's model.

    python benchmarks/quant_grid.py recipes/vit_static_int8.yaml --samples 2000 [--checkpoint W] [--speed]

Exports and optimizes once per attention-fusion setting, then quantizes each variant and
scores it against the FP32 ONNX on the same evaluation images. Prints a table and writes
JSON next to the artifacts. This is how the defaults in recipes/vit_static_int8.yaml were chosen.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vitdeploy.data.datasets import load_split, preprocess
from vitdeploy.data.scoring import onnx_accuracy
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.quantize import ArrayCalibrationReader, quantize_model
from vitdeploy.recipe.schema import CalibrationSpec, QuantizeSpec, load_recipe
from vitdeploy.torch.export import INPUT_NAME, export_onnx
from vitdeploy.torch.models import create_model

VARIANTS: dict[str, dict] = {
    "static qdq minmax per-channel rr": dict(mode="static"),
    "static qdq minmax per-channel rr, outputs quantized": dict(mode="static", quantize_outputs=True),
    "static qdq minmax per-channel rr, leftover weights fp32": dict(mode="static", store_other_weights_int8=False),
    "static qdq minmax per-channel no-rr": dict(mode="static", reduce_range=False),
    "static qdq minmax per-tensor rr": dict(mode="static", per_channel=False),
    "static qdq minmax per-channel rr +conv": dict(mode="static", op_types=["MatMul", "Gemm", "Conv"]),
    "static qdq entropy per-channel rr": dict(mode="static", calibration=CalibrationSpec(method="entropy")),
    "static qdq percentile per-channel rr": dict(mode="static", calibration=CalibrationSpec(method="percentile")),
    "static qdq s8s8 per-channel": dict(mode="static", activation_type="int8", reduce_range=False),
    "static qoperator minmax per-channel rr": dict(mode="static", format="qoperator"),
    "static qdq all ops (ORT default)": dict(mode="static", op_types=[], weights_only_matmul=False, keep_classifier_fp32=False),
    "dynamic per-channel rr (fused attn)": dict(mode="dynamic", op_types=["MatMul", "Gemm", "Attention"]),
    "dynamic per-channel no-rr (fused attn)": dict(mode="dynamic", op_types=["MatMul", "Gemm", "Attention"], reduce_range=False),
    "dynamic u8u8 (fused attn)": dict(mode="dynamic", op_types=["MatMul", "Gemm", "Attention"], weight_type="uint8"),
}


def latency_ms(path: Path, x: np.ndarray, repeats: int = 200) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        s.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        s.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    if args.checkpoint:
        recipe.model.checkpoint = args.checkpoint.resolve()
    torch.set_num_threads(2)
    model = create_model(recipe.model).eval()
    img = model.patch_embed.img_size[0]
    work = recipe.output.dir / ".work" / "quant_grid"
    work.mkdir(parents=True, exist_ok=True)
    raw = export_onnx(model, recipe.export, img, work / "export.onnx")
    heads = model.blocks[0].attn.num_heads
    fp32 = {}
    for fuse in (False, True):
        fp32[fuse] = work / f"fp32_attn{int(fuse)}.onnx"
        optimize_transformer(raw, fp32[fuse], recipe.optimize, heads, model.embed_dim, fuse)
    pre = recipe.data.preprocess
    evalset = load_split(recipe.data, recipe.data.eval_split).subset(args.samples)
    cal = load_split(recipe.data, "train").subset(256, seed=2)
    cal_x = preprocess(cal.images, pre, img)
    x1, x16 = cal_x[:1], cal_x[:16]
    rows = []
    for fuse, path in fp32.items():
        acc = onnx_accuracy(ort.InferenceSession(str(path)), evalset, pre, 100, f"fp32 attn={fuse}")
        row = {"variant": f"fp32 (fused attn={fuse})", "top1": acc, "mb": path.stat().st_size / 1e6}
        if args.speed:
            row |= {"b1_ms": latency_ms(path, x1), "b16_ms": latency_ms(path, x16)}
        rows.append(row)
    base = rows[0]["top1"]
    for name, kw in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        spec = QuantizeSpec(**kw)
        src = fp32[spec.mode == "dynamic"]
        out = work / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
        try:
            reader = ArrayCalibrationReader(INPUT_NAME, cal_x, 32) if spec.mode == "static" else None
            report = quantize_model(src, out, spec, reader)
            acc = onnx_accuracy(ort.InferenceSession(str(out)), evalset, pre, 100, name)
        except Exception as e:  # a variant ORT cannot build is a result too
            rows.append({"variant": name, "error": str(e)[:120]})
            continue
        row = {"variant": name, "top1": acc, "delta_pt": 100 * (acc - base), "mb": out.stat().st_size / 1e6,
               "int8_share": report["weights"]["int8_share"]}  # fmt: skip
        if args.speed:
            row |= {"b1_ms": latency_ms(out, x1), "b16_ms": latency_ms(out, x16)}
        rows.append(row)
        print(json.dumps(row))
    (recipe.output.dir / "quant_grid.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
