"""How closely a float16 file follows its FP32 file: top-1 agreement and logit error on test images.

    python benchmarks/gpu/fp16_agreement.py FP32.onnx FP16.onnx [--provider cuda] [--images N] [--json OUT]

Both files run on the same provider with the preprocessing the FP32 file carries; reported: top-1
of each against the labels, how often they pick the same class, and the largest and mean
absolute logit difference. `vitdeploy convert --fp16` keeps LayerNorm and Softmax in FP32; this
is the check that what it cast changes no answer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from vitdeploy.data.datasets import DataStore, batches, preprocess
from vitdeploy.onnx.graph import read_preprocess
from vitdeploy.runtime.sessions import open_predictor


def compare(fp32: Path, fp16: Path, provider: str, images: int | None, batch: int) -> dict:
    pre, size = read_preprocess(onnx.load(str(fp32), load_external_data=False))
    test = DataStore().load("cifar10", "test").subset(images, seed=3)
    runs = {"fp32": open_predictor(fp32, provider), "fp16": open_predictor(fp16, provider)}
    same = correct32 = correct16 = 0
    worst = total = 0.0
    for x, y in batches(test, batch):
        x = preprocess(x, pre, size)
        a, b = runs["fp32"](x), runs["fp16"](x).astype(np.float32)
        same += int((a.argmax(1) == b.argmax(1)).sum())
        correct32, correct16 = correct32 + int((a.argmax(1) == y).sum()), correct16 + int((b.argmax(1) == y).sum())
        diff = np.abs(a - b)
        worst, total = max(worst, float(diff.max())), total + float(diff.mean()) * len(y)
    n = len(test)
    return {
        "fp32": fp32.name, "fp16": fp16.name, "provider": provider, "images": n,
        "top1_agreement": same / n, "top1_fp32": correct32 / n, "top1_fp16": correct16 / n,
        "max_abs_logit_diff": worst, "mean_abs_logit_diff": total / n,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fp32", type=Path)
    p.add_argument("fp16", type=Path)
    p.add_argument("--provider", default="cuda")
    p.add_argument("--images", type=int, default=None, help="default: the whole test split")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    report = compare(args.fp32, args.fp16, args.provider, args.images, args.batch)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
