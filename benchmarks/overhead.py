"""Bench's reported throughput against a bare `session.run` loop on the same model.

    python benchmarks/overhead.py artifacts/vit_dynamic_int8.onnx --batch 16 --threads 2

Both use identical session options and input; the bare loop times the whole loop with one
clock read at each end, so any per-run bookkeeping in bench shows up as a difference. The
comparison uses bench's mean-based figure (the same estimator as the bare loop); its reported,
median-based figure is printed beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vitdeploy.bench.measure import BenchConfig, measure
from vitdeploy.runtime.sessions import open_session


def bare_loop(path: Path, batch: int, threads: int, seconds: float) -> float:
    session = open_session(path, "cpu", threads)
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
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    ratios = []
    for i in range(args.pairs):  # alternate the order, and compare within each pair: the machine drifts
        cfg = BenchConfig(duration_s=args.seconds)
        order = ("bare", "bench") if i % 2 == 0 else ("bench", "bare")
        got = {}
        for kind in order:
            if kind == "bare":
                got["bare"] = bare_loop(args.model, args.batch, args.threads, args.seconds)
            else:
                r = measure(args.model, "cpu", args.batch, args.threads, cfg)
                got["bench"], got["median"] = r.throughput_mean, r.throughput
        ratios.append(got["bench"] / got["bare"])
        print(f"pair {i + 1}: bare {got['bare']:8.1f}  bench {got['bench']:8.1f} (median-based {got['median']:8.1f}) img/s")
    ratio = float(np.median(ratios))
    print(f"bench (mean-based) / bare, median of {len(ratios)} pairs = {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")


if __name__ == "__main__":
    main()
