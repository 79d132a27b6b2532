"""What `vitdeploy tune` chose, beside the shipped recipes and NNCF, timed in one run.

    python benchmarks/tune_vs_peers.py artifacts/.tune/vit_static_int8_portable/tune.json \
        [--shipped vit_static_int8_portable,vit_prune_r0.1_int8_portable] [--rounds 5] [--duration 1]
        [--json runs/tune_vs_peers.json] [--reuse] [--accuracy-control both|no-sq|none]

Rows, each timed against the tune's FP32 file in paired rounds on the tune's providers and
batches (`bench --baseline`), and scored on the tune's scoring runtime on the test images it never scored a candidate on (the
whole test split, or its rest after `tune --holdout-from test`):

- the tuned artifact (`<name>.tuned.onnx`, built by tune on the test split);
- the shipped recipes named by `--shipped` (their artifacts in artifacts/, built when missing);
- NNCF's post-training quantization (transformer preset, the tune's calibration images) of the
  tune's FP32 file: the peer;
- NNCF's `quantize_with_accuracy_control` of the same file with the same budget, scored by NNCF
  on the same held-out training images tune used (absolute top-1 drop), which keeps the layers
  that lose most in float until the budget holds; once as NNCF sets it up, once with its
  SmoothQuant off.

Needs `pip install 'vitdeploy[openvino]'`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vitdeploy.bench import measure as B
from vitdeploy.core.progress import console, progress_bar
from vitdeploy.data.classes import decode_size
from vitdeploy.data.datasets import load_split, preprocess
from vitdeploy.data.scoring import predict_accuracy
from vitdeploy.onnx.graph import read_preprocess
from vitdeploy.pipeline.build import calibration_images, non_standard_ops
from vitdeploy.recipe.schema import DataSpec, Recipe, load_recipe
from vitdeploy.runtime.sessions import open_predictor
from vitdeploy.torch.export import INPUT_NAME
from vitdeploy.tune.search import Validation, candidate_recipe, scoring_provider
from vitdeploy.tune.space import Candidate

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "artifacts"


@dataclass
class Row:
    label: str
    path: Path
    seconds: float | None = None  # time to make it, for the NNCF rows


def shipped(name: str) -> Path:
    path = ART / f"{name}.onnx"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "vitdeploy.cli", "build", str(ROOT / "recipes" / f"{name}.yaml")], check=True)
    return path


def nncf_rows(
    report: dict, recipe: Recipe, fp32: Path, folder: Path, provider: str, reuse: bool, accuracy_control_runs: str
) -> list[Row]:
    """The peer and NNCF's accuracy-controlled quantization of the tune's FP32 file (with and
    without its SmoothQuant); `reuse`: files made by an earlier run are timed again, not remade."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    validation = Validation.of_report(report, recipe)
    static = Candidate("nncf", "", {"mode": "static"})
    scored = candidate_recipe(recipe, static, validation, tuple(report["settings"]["providers"]))
    pre, size = read_preprocess(onnx.load(str(fp32), load_external_data=False))
    cal = calibration_images(scored, size)
    calibration = nncf.Dataset(range(len(cal)), lambda i: {INPUT_NAME: cal[i : i + 1]})
    val = load_split(scored.data, scored.data.eval_split, decode_size(scored))
    items = [(val.images[i : i + 1], int(val.labels[i])) for i in range(len(val))]

    def validate(model: onnx.ModelProto, items: Iterable) -> tuple[float, list[float]]:
        data = list(items)  # NNCF counts the items it hands over
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/m.onnx")
            predict = open_predictor(Path(f"{tmp}/m.onnx"), provider)
            correct = []
            for start in range(0, len(data), 100):
                part = data[start : start + 100]
                x = preprocess(np.concatenate([im for im, _ in part]), pre, size)
                correct += [float(p == y) for p, (_, y) in zip(predict(x).argmax(1), part, strict=True)]
        return float(np.mean(correct)), correct

    def accuracy_control(smooth_quant: bool) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
        advanced = nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.95 if smooth_quant else -1)
        )
        return lambda m: nncf.quantize_with_accuracy_control(
            m, calibration, nncf.Dataset(items), validate, max_drop=report["max_drop"] / 100,
            drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(cal),
            advanced_quantization_parameters=advanced,
        )  # fmt: skip

    budget = f"{report['max_drop']:g} points"
    makers = (
        ("nncf_ptq", "NNCF PTQ (transformer preset): the peer",
         lambda m: nncf.quantize(m, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(cal))),
        ("nncf_accuracy_control", f"NNCF with accuracy control ({budget})", accuracy_control(True)),
        ("nncf_accuracy_control_no_sq", f"NNCF with accuracy control ({budget}), its SmoothQuant off", accuracy_control(False)),
    )  # fmt: skip
    rows = []
    chosen = {"both": makers, "no-sq": (makers[0], makers[2]), "none": makers[:1]}[accuracy_control_runs]
    for stem, label, make in chosen:
        target, record = folder / f"{stem}.onnx", folder / f"{stem}.json"
        if not (reuse and target.is_file() and record.is_file()):  # made before: NNCF is deterministic here
            started = time.perf_counter()
            onnx.save(make(onnx.load(str(fp32))), str(target))
            record.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        rows.append(Row(label, target, json.loads(record.read_text())["seconds"]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tune_json", type=Path)
    p.add_argument("--shipped", default="", help="comma-separated shipped recipe names to time beside")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--accuracy-control",
        choices=("both", "no-sq", "none"),
        default="both",
        help="which of NNCF's accuracy-controlled runs to make: both, only the one without SmoothQuant, none",
    )
    p.add_argument("--reuse", action="store_true", help="time the NNCF files an earlier run made instead of making them again")
    args = p.parse_args()

    report = json.loads(args.tune_json.read_text())
    recipe = load_recipe(Path(report["recipe"]))
    providers, batches = tuple(report["settings"]["providers"]), tuple(report["settings"]["batches"])
    provider = scoring_provider(providers)  # where tune scored its candidates
    fp32 = Path(next(c["artifact"] for c in report["candidates"] if c["name"] == "fp32"))
    rows = [Row("FP32 (tune's baseline)", fp32), Row(f"tuned: {report['winner']}", Path(report["test"]["artifact"]))]
    rows += [Row(f"shipped: {name}", shipped(name)) for name in args.shipped.split(",") if name]
    foreign = non_standard_ops(fp32)
    if foreign:  # an ONNX Runtime graph (the tune targeted ONNX Runtime alone): NNCF cannot read it
        console.print(f"[yellow]no NNCF rows: {fp32.name} has ONNX Runtime's own operators ({', '.join(foreign)})")
    else:
        rows += nncf_rows(report, recipe, fp32, args.tune_json.parent, provider, args.reuse, args.accuracy_control)

    paths = [r.path for r in rows]
    cfg = B.BenchConfig(providers=providers, batches=batches, threads=(args.threads,), warmup=5,
                        duration_s=args.duration, min_iters=10, rounds=args.rounds)  # fmt: skip
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(B.onnx_cells(paths, cfg), cfg, bar, B.baseline_cells(paths, fp32, cfg))
    B.add_ratios(results, fp32.name)
    pre, size = read_preprocess(onnx.load(str(fp32), load_external_data=False))
    # the test images tune never scored a candidate on: all of them, or the rest after --holdout-from test
    reported = Validation.of_report(report, recipe).reported(recipe.data.model_dump() | {"holdout": None})
    test = load_split(DataSpec.model_validate(reported), recipe.data.eval_split, decode_size(recipe))
    out = {"environment": B.environment(cfg), "tune": str(args.tune_json), "rows": []}
    head = "| row | test top-1 | " + " | ".join(f"{p} b{b}" for p in providers for b in batches) + " | made in |"
    lines = [head, "|" + "---|" * (3 + len(providers) * len(batches))]
    for row in rows:
        top1 = predict_accuracy(open_predictor(row.path, provider), test, pre, size, 100, row.label)
        cells = {(r.provider, r.batch): r for r in results if r.model == row.path.name}
        speeds = {}
        for key, r in cells.items():
            pairs = r.extra.get("bracket_ratios") or [r.extra.get("speedup", 1.0)]
            speeds[f"{key[0]} b{key[1]}"] = (r.extra.get("speedup", 1.0), min(pairs), max(pairs))
        out["rows"].append({"row": row.label, "file": str(row.path), "test_top1": top1, "speed": speeds, "seconds": row.seconds})
        shown = [f"{s:.2f}x ({lo:.2f}–{hi:.2f})" for s, lo, hi in speeds.values()]
        made = f"{row.seconds:.0f} s" if row.seconds else ""
        lines.append(f"| {row.label} | {100 * top1:.2f} % | " + " | ".join(shown) + f" | {made} |")
    console.print(f"\n{out['environment']['cpu']}; speed against {fp32.name}, median of {args.rounds} pairs (range)\n")
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
