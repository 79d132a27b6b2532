"""Is the machine steady? A bare `session.run` loop, its median latency per short window.

    python benchmarks/drift.py MODEL.onnx [--batch 1] [--threads 2] [--seconds 20] [--window 0.25]

No vitdeploy code runs inside the loop, so whatever varies here varies for any benchmark on this
machine. It prints the median latency of each window, the spread of those medians, and the spread
of the medians of consecutive 2-second blocks (the length of one `vitdeploy bench` round).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=0.25)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([args.batch, *inp.shape[1:]], dtype=np.float32)
    for _ in range(50):
        session.run(None, {inp.name: x})
    starts, latencies = [], []
    t_end = time.perf_counter() + args.seconds
    while (t0 := time.perf_counter()) < t_end:
        session.run(None, {inp.name: x})
        starts.append(t0)
        latencies.append(time.perf_counter() - t0)
    at = np.array(starts) - starts[0]
    ms = np.array(latencies) * 1e3

    def window_medians(width: float) -> np.ndarray:
        edges = np.arange(0, args.seconds, width)
        return np.array([np.median(ms[(at >= e) & (at < e + width)]) for e in edges if ((at >= e) & (at < e + width)).any()])

    short, blocks = window_medians(args.window), window_medians(2.0)
    print(f"{len(ms)} runs over {args.seconds:.0f} s, median {np.median(ms):.2f} ms")
    print(f"median latency per {args.window * 1000:.0f} ms window:", " ".join(f"{m:.2f}" for m in short))
    for name, med in ((f"{args.window * 1000:.0f} ms windows", short), ("2 s blocks", blocks)):
        img_s = args.batch * 1e3 / med
        print(f"throughput over {name}: {img_s.min():.0f}-{img_s.max():.0f} img/s, "
              f"spread (max-min)/median {(img_s.max() - img_s.min()) / np.median(img_s):.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
