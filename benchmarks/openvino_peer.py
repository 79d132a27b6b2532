"""vitdeploy's CPU artifacts beside the peer a CPU user would pick: NNCF post-training quantization + OpenVINO.

    python benchmarks/openvino_peer.py [--batches 1,16] [--threads 2] [--rounds 5] [--duration 2]
                                       [--samples 10000] [--json runs/openvino_peer.json] [--bf16]
                                       [--plot docs/openvino_speed.png]
    python benchmarks/openvino_peer.py --replot runs/openvino_peer.json --plot docs/openvino_speed.png

Needs `pip install 'vitdeploy[openvino]'` (OpenVINO and NNCF) and the artifacts of
`recipes/vit_fp32.yaml`, `vit_dynamic_int8.yaml`, `vit_static_int8.yaml` and the portable
recipes `vit_fp32_portable.yaml`, `vit_static_int8_portable.yaml`, `vit_prune_r0.1_int8_portable.yaml`
and `deit_tiny_int8_portable.yaml` (built when missing).

The peer: NNCF's `quantize` with `ModelType.TRANSFORMER` on the plain FP32 export
(`vit_fp32_portable.onnx`, standard operators), 300 training images for calibration, run by
OpenVINO. Every row is timed in the same process over `--rounds` rounds, each time right after a fresh
run of the NNCF peer: "vs NNCF" is the median over rounds of those back-to-back ratios; "vs ORT
FP32" pairs each row with ONNX Runtime FP32 in the same round. Top-1 is measured on each row's
own runtime and precision.

`--bf16` (CPUs with AVX-512 BF16 or AMX) adds rows on the `openvino-bf16` provider, where
OpenVINO computes the layers left in float in bfloat16, the peer among them: those rows are
compared with the peer at the same precision (paired by round).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from vitdeploy.bench import measure as B
from vitdeploy.core.progress import console, progress_bar
from vitdeploy.data.datasets import DataStore, ImageSet, preprocess
from vitdeploy.data.scoring import predict_accuracy
from vitdeploy.recipe.schema import load_recipe
from vitdeploy.runtime.sessions import open_predictor

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "artifacts"
RECIPES = (
    "vit_fp32", "vit_dynamic_int8", "vit_static_int8", "vit_fp32_portable", "vit_static_int8_portable",
    "vit_prune_r0.1_int8_portable", "deit_tiny_int8_portable",
)  # fmt: skip


def ensure_built(name: str) -> Path:
    path = ART / f"{name}.onnx"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "vitdeploy.cli", "build", str(ROOT / "recipes" / f"{name}.yaml")], check=True)
    return path


def nncf_peer(fp32: Path, target: Path, samples: int = 300) -> float:
    """NNCF PTQ (transformer preset) of `fp32` into `target`; returns the seconds it took."""
    import nncf
    import onnx

    recipe = load_recipe(ROOT / "recipes" / "vit_fp32.yaml")
    images = DataStore().load("cifar10", "train").subset(samples, seed=2)
    x = preprocess(images.images, recipe.data.preprocess, 32)
    dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))], lambda a: {"pixel_values": a})
    t0 = time.perf_counter()
    quantized = nncf.quantize(onnx.load(str(fp32)), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=samples)
    seconds = time.perf_counter() - t0
    onnx.save(quantized, str(target))
    return seconds


def accuracy(path: Path, provider: str, test: ImageSet) -> float:
    pre = load_recipe(ROOT / "recipes" / "vit_fp32.yaml").data.preprocess
    return predict_accuracy(open_predictor(path, provider), test, pre, 32, 100, f"{path.name} ({provider})")


def rows(peer: Path, bf16: bool) -> list[tuple[str, Path, str]]:
    """(label, model, provider) of every row of the table, baseline first, the peer last."""
    extra = [
        ("OpenVINO bf16, FP32 (vit_fp32_portable)", ART / "vit_fp32_portable.onnx", "openvino-bf16"),
        ("OpenVINO bf16, vitdeploy pruned + portable static INT8", ART / "vit_prune_r0.1_int8_portable.onnx", "openvino-bf16"),
        ("OpenVINO bf16, DeiT-tiny portable static INT8", ART / "deit_tiny_int8_portable.onnx", "openvino-bf16"),
        ("NNCF PTQ (transformer preset) -> OpenVINO bf16", peer, "openvino-bf16"),
    ]  # fmt: skip
    return [
        ("ONNX Runtime FP32 (vit_fp32)", ART / "vit_fp32.onnx", "cpu"),
        ("ONNX Runtime dynamic INT8 (vit_dynamic_int8)", ART / "vit_dynamic_int8.onnx", "cpu"),
        ("ONNX Runtime static INT8 (vit_static_int8)", ART / "vit_static_int8.onnx", "cpu"),
        ("ONNX Runtime portable static INT8 (vit_static_int8_portable)", ART / "vit_static_int8_portable.onnx", "cpu"),
        ("OpenVINO FP32 (vit_fp32_portable)", ART / "vit_fp32_portable.onnx", "openvino"),
        ("OpenVINO, vitdeploy static INT8 (vit_static_int8)", ART / "vit_static_int8.onnx", "openvino"),
        ("OpenVINO, vitdeploy portable static INT8", ART / "vit_static_int8_portable.onnx", "openvino"),
        ("ONNX Runtime, vitdeploy pruned + portable static INT8", ART / "vit_prune_r0.1_int8_portable.onnx", "cpu"),
        ("OpenVINO, vitdeploy pruned + portable static INT8", ART / "vit_prune_r0.1_int8_portable.onnx", "openvino"),
        ("OpenVINO, DeiT-tiny portable static INT8 (deit_tiny_int8_portable)", ART / "deit_tiny_int8_portable.onnx", "openvino"),
        *(extra if bf16 else []),
        ("NNCF PTQ (transformer preset) -> OpenVINO", peer, "openvino"),
    ]


SHORT_NAMES = {
    "vit_fp32": "FP32", "vit_dynamic_int8": "dynamic INT8", "vit_static_int8": "static INT8",
    "vit_static_int8_portable": "portable INT8", "vit_fp32_portable": "FP32", "nncf_ptq_vit": "NNCF peer",
    "vit_prune_r0.1_int8_portable": "pruned + INT8", "deit_tiny_int8_portable": "DeiT-tiny INT8",
}  # fmt: skip


def plot(report: dict, target: Path, batch: str = "16") -> None:
    """Top-1 against speed (vs ONNX Runtime FP32) at `batch`, one colour per runtime and precision:
    every row on the left, the rows within a point of FP32 on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"cpu": "#1f77b4", "openvino": "#2ca02c", "openvino-bf16": "#ff7f0e"}
    names = {"cpu": "ONNX Runtime", "openvino": "OpenVINO, float32", "openvino-bf16": "OpenVINO, bfloat16"}
    fp32 = 100 * report["rows"][0]["top1"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120)
    for ax, close in zip(axes, (False, True), strict=True):
        for provider, colour in colours.items():
            rows = [r for r in report["rows"] if r["runtime"] == provider and batch in r["batches"]]
            rows = [r for r in rows if not close or abs(100 * r["top1"] - fp32) <= 1.0]
            xs, ys = [r["batches"][batch]["vs_ort_fp32"] for r in rows], [100 * r["top1"] for r in rows]
            ax.scatter(xs, ys, color=colour, label=names[provider], zorder=3)
            for i, (r, x, y) in enumerate(zip(rows, xs, ys, strict=True)):
                label = SHORT_NAMES.get(r["model"].removesuffix(".onnx"), r["model"])
                peer = label == "NNCF peer"
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 6 if i % 2 else -10), fontsize=7,
                            fontweight="bold" if peer else "normal", color=colour)  # fmt: skip
        ax.axhline(fp32 - 0.3, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"throughput at batch {batch} / ONNX Runtime FP32 (paired rounds)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 on the 10,000 CIFAR-10 test images (%)")
    axes[0].set_title("every row", fontsize=9)
    axes[1].set_title("within a point of FP32 (dotted: 0.3 points below)", fontsize=9)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--samples", type=int, default=10000, help="test images scored per row")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--bf16", action="store_true", help="add rows on openvino-bf16 (CPUs with native bfloat16)")
    p.add_argument("--plot", type=Path, default=None, help="also draw top-1 against batch-16 speed into this PNG")
    p.add_argument("--replot", type=Path, default=None, help="only draw --plot from an earlier run's --json")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.plot or args.replot.with_suffix(".png"))
        return

    for name in RECIPES:
        ensure_built(name)
    peer = ART / "nncf_ptq_vit.onnx"
    nncf_seconds = nncf_peer(ART / "vit_fp32_portable.onnx", peer)
    table = rows(peer, args.bf16)
    batches = tuple(int(b) for b in args.batches.split(","))
    cfg = B.BenchConfig(batches=batches, threads=(args.threads,), rounds=args.rounds, duration_s=args.duration)
    cells = [c for _, path, runtime in table for c in B.onnx_cells([path], replace(cfg, providers=(runtime,)))]
    # Every row is timed right after a fresh run of the peer (the last row): the "vs NNCF" ratios
    # compare cells seconds apart, whatever the shared machine does in between.
    peer_first = (len(table) - 1) * len(batches)
    brackets = {i: peer_first + i % len(batches) for i in range(len(cells))}
    test = DataStore().load("cifar10", "test").subset(args.samples)
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(cells, cfg, bar, brackets)
    top1 = {label: accuracy(path, provider, test) for label, path, provider in table}
    by_cell = {(r.model, r.provider, r.batch): r for r in results}
    providers = tuple(dict.fromkeys(provider for _, _, provider in table))
    report = {"environment": B.environment(replace(cfg, providers=providers)), "nncf_seconds": nncf_seconds, "rows": []}
    header = "| path | top-1 | " + " | ".join(f"batch {b} img/s | vs ORT FP32 | vs NNCF" for b in batches) + " |"
    lines = [header, "|" + "---|" * (2 + 3 * len(batches))]
    for label, path, runtime in table:
        row = {"path": label, "model": path.name, "runtime": runtime, "top1": top1[label], "batches": {}}
        cells_md = []
        for b in batches:
            r, base = by_cell.get((path.name, runtime, b)), by_cell[(table[0][1].name, "cpu", b)]
            nncf = by_cell.get((peer.name, runtime, b)) or by_cell.get((peer.name, "openvino", b))
            if r is None or r.error:
                cells_md += ["failed", r.error if r else "missing", ""]
                continue
            speed = B.paired_speedup(r, base) or r.throughput / base.throughput
            vs_peer = (B.paired_speedup(r, nncf) or r.throughput / nncf.throughput) if nncf and not nncf.error else None
            row["batches"][b] = {"throughput": r.throughput, "vs_ort_fp32": speed, "vs_nncf": vs_peer, "spread": r.round_spread}
            cells_md += [f"{r.throughput:,.0f}", f"{speed:.2f}x", f"{vs_peer:.2f}x" if vs_peer else ""]
        report["rows"].append(row)
        lines.append(f"| {label} | {top1[label]:.2%} | " + " | ".join(cells_md) + " |")
    isa = report["environment"]["cpu_isa"]
    console.print(f"\n{report['environment']['cpu']}; ISA {', '.join(k for k, v in isa.items() if v)}; "
                  f"{args.threads} threads; NNCF PTQ took {nncf_seconds:.1f} s\n")  # fmt: skip
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))
    if args.plot:
        plot(json.loads(json.dumps(report, default=float)), args.plot)  # batches keyed as in the JSON


if __name__ == "__main__":
    main()
