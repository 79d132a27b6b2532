"""Where Nyström attention starts to pay: exact vs Nyström latency in ONNX Runtime by token count.

    python benchmarks/nystrom_crossover.py [--tokens 65,197,577,1025,2049,4097] [--landmarks 32,64]
                                           [--threads 2] [--seconds 1.0] [--json runs/nystrom_crossover.json]

For each token count N, one attention layer and one whole transformer block (the reference
teacher's width: 192-d, 3 heads, MLP 384) are exported to ONNX at batch 1 with N tokens, once
with exact softmax attention and once per landmark count with `vitdeploy.torch.nystrom`, and timed
in ONNX Runtime on the CPU. The exact form is exported as vitdeploy exports it (separate q/k/v
MatMuls, explicit softmax), so ORT may fuse it. The runs of one N alternate between the
variants (paired rounds), so slow drift of the machine cancels out of the ratios. Prints
median latency per variant and the speedup of Nyström over exact; the crossover is the
smallest N where Nyström is faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from timm.models.vision_transformer import Block

from vitdeploy.torch.models import split_qkv
from vitdeploy.torch.nystrom import NystromAttention


def make_variants(tokens: int, landmarks: list[int], dim: int, heads: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    block = Block(dim, heads, mlp_ratio=2.0, qkv_bias=True).eval()
    block.attn.fused_attn = False
    variants: dict[str, torch.nn.Module] = {}
    exact = split_qkv(copy.deepcopy(block))
    variants["block exact"], variants["attention exact"] = exact, exact.attn
    for m in landmarks:
        if m > tokens:
            continue
        nys = copy.deepcopy(block)
        nys.attn = NystromAttention(block.attn, m, tokens)
        variants[f"block nystrom m={m}"], variants[f"attention nystrom m={m}"] = nys, nys.attn
    return variants


def export(module: torch.nn.Module, tokens: int, dim: int, path: Path) -> Path:
    x = torch.randn(1, tokens, dim)
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    return path


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_runs(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> list[float]:
    for _ in range(3):
        sess.run(None, {"x": x})
    runs, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(runs) < 5:
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        runs.append(time.perf_counter() - t0)
    return runs


def measure(tokens: int, landmarks: list[int], threads: int, seconds: float, rounds: int, dim: int, heads: int) -> dict:
    variants = make_variants(tokens, landmarks, dim, heads)
    x = np.random.default_rng(0).standard_normal((1, tokens, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {
            name: session(export(mod, tokens, dim, Path(tmp) / f"{i}.onnx"), threads)
            for i, (name, mod) in enumerate(variants.items())
        }
        medians: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, sess in sessions.items():
                medians[name].append(statistics.median(time_runs(sess, x, seconds / rounds)))
    result = {"tokens": tokens, "latency_ms": {k: 1e3 * statistics.median(v) for k, v in medians.items()}, "speedup": {}}
    for name in medians:
        if "nystrom" in name:
            exact = name.split(" ")[0] + " exact"
            ratios = [e / n for e, n in zip(medians[exact], medians[name], strict=True)]
            result["speedup"][name] = statistics.median(ratios)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="65,197,577,1025,2049,4097")
    p.add_argument("--landmarks", default="32,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per variant and token count")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    landmarks = [int(m) for m in args.landmarks.split(",")]
    results = []
    for n in (int(t) for t in args.tokens.split(",")):
        r = measure(n, landmarks, args.threads, args.seconds, args.rounds, args.dim, args.heads)
        results.append(r)
        cells = "  ".join(f"{k} {v:.3f} ms" for k, v in r["latency_ms"].items())
        speed = "  ".join(f"{k}: {v:.2f}x" for k, v in r["speedup"].items())
        print(f"N={n:5d}  {cells}\n         speedup over exact: {speed}", flush=True)
    for kind in ("attention", "block"):
        for m in landmarks:
            key = f"{kind} nystrom m={m}"
            faster = [r["tokens"] for r in results if r["speedup"].get(key, 0) > 1.0]
            print(f"crossover, {key}: " + (f"faster from N={min(faster)}" if faster else "never faster in the range measured"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"threads": args.threads, "dim": args.dim, "heads": args.heads, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
