"""Real-scale ViTs at 224x224: what a build costs and what INT8 buys, for docs/scale.md.

    python benchmarks/scale.py [--models vit_s16,vit_b16] [--batches 1,8] [--rounds 3] [--duration 2]
                               [--json runs/scale.json] [--skip-build | --builds-only] [--kinds int8_nncf]

Builds `recipes/scale/<model>_{fp32,static_int8,int8_portable,int8_nncf}.yaml` (random weights; see
their headers), each in a fresh process, and prints per build: wall time per step, peak RSS
(from the manifest: the build process's maximum resident set) and sizes. For the no-training
static INT8 build it also times the work no build can avoid, bare and in this process: one
`torch.onnx.export`, one pass of ONNX Runtime's transformer optimizer, the calibration forward
passes on ONNX Runtime, one PyTorch and one ONNX pass over the parity images, and the
evaluation passes (PyTorch, FP32, INT8), so the two sums stand side by side.

Then it times, at each batch, ONNX Runtime FP32 and INT8, OpenVINO FP32 and INT8 (the
portable build and the build quantized by NNCF), and the peer: NNCF's post-training quantization (transformer preset, the same
calibration count) of the same FP32 export, run by OpenVINO. Each cell runs right after a fresh
run of ONNX Runtime FP32 ("vs ORT FP32": the median over `--rounds` of those back-to-back
pairs, with their lowest and highest); "vs NNCF" pairs each cell with the peer's cell of the
same round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vitdeploy.bench import measure as B
from vitdeploy.core.progress import console, progress_bar
from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.recipe.schema import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "scale"
KINDS = ("fp32", "static_int8", "int8_portable", "int8_nncf")


def build(name: str) -> dict:
    recipe = RECIPES / f"{name}.yaml"
    subprocess.run([sys.executable, "-m", "vitdeploy.cli", "build", str(recipe), "--fresh"], check=True)
    r = load_recipe(recipe)
    return json.loads((r.output.dir / f"{r.artifact_name}.json").read_text())


def unavoidable_seconds(name: str) -> dict[str, float]:
    """The bare work of a no-training static INT8 build of `name`, each step timed alone."""
    import onnxruntime as ort
    import torch

    from vitdeploy.onnx.fusion import optimize_transformer
    from vitdeploy.torch.models import create_model

    recipe = load_recipe(RECIPES / f"{name}.yaml")
    model = create_model(recipe.model).eval()
    size = model.patch_embed.img_size[0]
    pre = recipe.data.preprocess
    store = DataStore()
    cal = store.load("cifar10", "train").subset(recipe.quantize.calibration.samples, seed=2)
    test = store.load("cifar10", "test").subset(recipe.evaluate.samples)
    parity = test.subset(recipe.export.parity_samples, seed=1)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        t = time.perf_counter()
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(raw), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], dynamic_axes={"pixel_values": {0: "batch"}})  # fmt: skip
        seconds["export"] = time.perf_counter() - t
        t = time.perf_counter()
        optimize_transformer(raw, fused, recipe.optimize, 0, 0, False)
        seconds["optimize"] = time.perf_counter() - t
        session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])

        def onnx_pass(images: np.ndarray, batch: int) -> None:
            for i in range(0, len(images), batch):
                session.run(None, {"pixel_values": preprocess(images[i : i + batch], pre, size)})

        def torch_pass(images: np.ndarray, batch: int) -> None:
            with torch.inference_mode():
                for i in range(0, len(images), batch):
                    model(torch.from_numpy(preprocess(images[i : i + batch], pre, size)))

        for label, work in (
            ("calibration passes", lambda: onnx_pass(cal.images, 1)),
            ("parity: PyTorch + ONNX", lambda: (torch_pass(parity.images, 32), onnx_pass(parity.images, 32))),
            ("evaluation: PyTorch + FP32 + INT8 (INT8 timed as FP32)", lambda: (
                torch_pass(test.images, 8), onnx_pass(test.images, 8), onnx_pass(test.images, 8))),
        ):  # fmt: skip
            t = time.perf_counter()
            work()
            seconds[label] = time.perf_counter() - t
    return {k: round(v, 1) for k, v in seconds.items()}


def nncf_peer(fp32: Path, target: Path, name: str) -> float:
    """NNCF PTQ (transformer preset) of `fp32`, the recipe's calibration count; seconds taken."""
    import nncf
    import onnx

    recipe = load_recipe(RECIPES / f"{name}_int8_portable.yaml")
    samples = recipe.quantize.calibration.samples
    images = DataStore().load("cifar10", "train").subset(samples, seed=2).images
    pre = recipe.data.preprocess
    dataset = nncf.Dataset(list(images), lambda im: {"pixel_values": preprocess(im[None], pre, 224)})
    t = time.perf_counter()
    quantized = nncf.quantize(onnx.load(str(fp32)), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=samples)
    seconds = time.perf_counter() - t
    onnx.save(quantized, str(target))
    return seconds


def speed_table(model: str, out: Path, batches: tuple[int, ...], rounds: int, duration: float) -> list[dict]:
    peer = out / f"{model}_nncf_ptq.onnx"
    peer_seconds = nncf_peer(out / f"{model}_int8_portable.fp32.onnx", peer, model)
    rows = [
        ("ONNX Runtime FP32 (fused)", out / f"{model}_fp32.onnx", "cpu"),
        ("ONNX Runtime static INT8", out / f"{model}_static_int8.onnx", "cpu"),
        ("OpenVINO FP32", out / f"{model}_int8_portable.fp32.onnx", "openvino"),
        ("OpenVINO portable INT8 (vitdeploy)", out / f"{model}_int8_portable.onnx", "openvino"),
        ("OpenVINO INT8 by NNCF (vitdeploy, quantize.backend nncf)", out / f"{model}_int8_nncf.onnx", "openvino"),
        ("NNCF PTQ -> OpenVINO (peer)", peer, "openvino"),
    ]
    # A 224x224 ViT runs for a good fraction of a second at batch 8 on two cores: ten timed runs
    # per cell (not a hundred) keep the grid to minutes.
    cfg = B.BenchConfig(batches=batches, threads=(None,), rounds=rounds, duration_s=duration, warmup=3, min_iters=10)
    cells = [c for _, path, provider in rows for c in B.onnx_cells([path], replace(cfg, providers=(provider,)))]
    peer_first = (len(rows) - 1) * len(batches)
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(cells, cfg, bar, {i: i % len(batches) for i in range(len(cells))})
    report = []
    for i, (label, path, provider) in enumerate(rows):
        row = {"row": label, "file": path.name, "provider": provider, "nncf_seconds": peer_seconds, "batches": {}}
        for j, b in enumerate(batches):
            r, peer_cell = results[i * len(batches) + j], results[peer_first + j]
            row["batches"][b] = {
                "throughput": r.throughput,
                "vs_ort_fp32": B.paired_speedup(r, results[j]),  # measured right after it, every round
                "vs_ort_fp32_range": pair_range(r),
                "vs_nncf": B.paired_speedup(r, peer_cell),  # paired round by round
                "vs_nncf_range": round_range(r, peer_cell),
                "error": r.error,
            }
        report.append(row)
    return report


def pair_range(result: B.Result) -> list[float] | None:
    """Lowest and highest of a cell's back-to-back ratios over the rounds."""
    ratios = result.extra.get("bracket_ratios")
    return [min(ratios), max(ratios)] if ratios else None


def round_range(result: B.Result, base: B.Result) -> list[float] | None:
    """Lowest and highest ratio of two cells' throughputs in the same round."""
    series = zip(result.extra.get("round_series", []), base.extra.get("round_series", []), strict=False)
    pairs = [a / b for a, b in series if a and b]
    return [min(pairs), max(pairs)] if pairs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_s16,vit_b16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--skip-build", action="store_true", help="reuse the artifacts already built")
    p.add_argument("--kinds", default=",".join(KINDS), help="which builds to (re)build; the others' artifacts are reused")
    p.add_argument("--builds-only", action="store_true", help="build and time the unavoidable work; no speed table")
    args = p.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    report: dict = {"environment": B.environment(B.BenchConfig()), "models": {}}
    for model in args.models.split(","):
        entry: dict = {"builds": {}}
        for kind in KINDS:
            name = f"{model}_{kind}"
            rebuild = kind in args.kinds.split(",") and not args.skip_build
            m = build(name) if rebuild else json.loads(
                (load_recipe(RECIPES / f"{name}.yaml").output.dir / f"{name}.json").read_text())  # fmt: skip
            entry["builds"][name] = {k: m[k] for k in ("timings_s", "peak_rss_mb", "sizes_bytes")}
            console.print(name, entry["builds"][name])
        entry["unavoidable_s"] = unavoidable_seconds(f"{model}_static_int8")
        console.print("unavoidable work", entry["unavoidable_s"])
        out = load_recipe(RECIPES / f"{model}_fp32.yaml").output.dir
        entry["speed"] = [] if args.builds_only else speed_table(model, out, batches, args.rounds, args.duration)
        for row in entry["speed"]:
            console.print(row["row"], json.dumps(row["batches"]))
        report["models"][model] = entry
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
