"""Bench's reported throughput against a bare `session.run` loop on the same model.

    python benchmarks/overhead.py artifacts/deit_int8.onnx --batch 16 --threads 2 --seconds 10

Both use identical session options and input; the bare loop times the whole loop with one
clock read at each end, so any per-run bookkeeping in bench shows up as a difference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitdeploy.bench import BenchConfig, measure, session_options


def bare_loop(path: Path, batch: int, threads: int, seconds: float) -> float:
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *inp.shape[1:]], dtype=np.float32)
    feeds = {inp.name: x}
    for _ in range(10):
        session.run(None, feeds)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        n += 1
    return batch * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    rows = []
    for order in range(2):  # alternate to cancel drift
        for kind in ("bare", "bench") if order == 0 else ("bench", "bare"):
            if kind == "bare":
                rows.append(("bare", bare_loop(args.model, args.batch, args.threads, args.seconds)))
            else:
                r = measure(args.model, "cpu", args.batch, args.threads, BenchConfig(duration_s=args.seconds))
                rows.append(("bench", r.throughput))
    bare = np.mean([v for k, v in rows if k == "bare"])
    bench = np.mean([v for k, v in rows if k == "bench"])
    for k, v in rows:
        print(f"{k:6s} {v:10.1f} img/s")
    print(f"bench / bare = {bench / bare:.4f} ({100 * (bench / bare - 1):+.2f}%)")


if __name__ == "__main__":
    main()
