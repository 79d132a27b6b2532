"""`vitdeploy predict` over the 10,000 CIFAR-10 test JPEGs beside `vitdeploy bench`, paired.

    python benchmarks/predict_vs_bench.py [--artifact artifacts/deit_int8.onnx] [--batch 16]
                                          [--threads 2] [--provider cpu] [--rounds 5]

Each round times `vitdeploy bench`'s cell (same artifact, batch, provider, threads; 1.5 s)
and a predict pass (decode, preprocess, infer, top-k, CSV rows) over two of the ten class
folders (2,000 images), one right after the other: a shared machine changes speed every few
seconds, by up to 1.7x, so only pairs this short see the same machine. The ratio is taken
per round and the median over rounds reported. Then one `vitdeploy predict` process is run under the kernel's peak-memory count
(`/usr/bin/time`) and its top-1 compared with the build manifest's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import tarfile
from pathlib import Path

from vitdeploy.bench import measure as B
from vitdeploy.delivery.packaging import package
from vitdeploy.runtime.bundle import open_bundle
from vitdeploy.runtime.predict import Tally, bundle_predictor, predict
from vitdeploy.runtime.results import csv_writer

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def test_jpegs(folder: Path) -> Path:
    """The test split of the shared archive as JPEG files in class folders."""
    target = folder / "cifar10" / "test"
    if not target.is_dir():
        with tarfile.open(ARCHIVE) as tf:
            members = [m for m in tf.getmembers() if "/test/" in m.name]
            tf.extractall(folder, members=members, filter="data")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "deit_int8.onnx")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--provider", default="cpu")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--images", type=Path, default=Path("/tmp/vitdeploy-cifar10-jpg"))
    args = p.parse_args()

    images = test_jpegs(args.images)
    bundle_dir = args.artifact.with_name(args.artifact.name.removesuffix(".onnx") + ".bundle")
    bundle = open_bundle(package(args.artifact, bundle_dir))
    run = bundle_predictor(bundle, args.provider, args.threads)
    cfg = B.BenchConfig(providers=(args.provider,), batches=(args.batch,), threads=(args.threads,), duration_s=1.5)
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    rows = []
    for r in range(args.rounds):
        cell = B.measure(args.artifact, args.provider, args.batch, args.threads, cfg)
        tally = Tally()
        write = csv_writer(io.StringIO(), 3)
        pair = [folders[(2 * r) % len(folders)], folders[(2 * r + 1) % len(folders)]]
        for item in predict(bundle, pair, run, args.batch, tally=tally):
            write(item)
        rate = tally.images / tally.seconds
        rows.append((cell.throughput, cell.throughput_mean, rate))
        print(f"round {r + 1}: bench {cell.throughput:,.0f} img/s (mean-based {cell.throughput_mean:,.0f}), "
              f"predict {rate:,.0f} img/s -> {rate / cell.throughput:.3f} / {rate / cell.throughput_mean:.3f}")  # fmt: skip
    ratio = statistics.median(rate / bench for bench, _, rate in rows)
    ratio_mean = statistics.median(rate / mean for _, mean, rate in rows)

    out = Path("/tmp/vitdeploy-predict.csv")
    cmd = ["/usr/bin/time", "-f", "%M", "vitdeploy", "predict", str(bundle_dir), str(images), "--batch", str(args.batch),
           "--threads", str(args.threads), "--provider", args.provider, "--csv", "-o", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    peak_mb = int(done.stderr.strip().splitlines()[-1]) / 1024
    results = list(csv.DictReader(out.open()))
    correct = sum(Path(r["path"]).parent.name == r["label_1"] for r in results)
    manifest = json.loads(args.artifact.with_suffix(".json").read_text())
    top1 = manifest["evaluate"]["top1"]
    expected = top1.get("onnx_int8", top1["onnx_fp32"])
    env = B.environment(cfg)
    print(f"\n{env['cpu']}; ISA {', '.join(k for k, v in env['cpu_isa'].items() if v)}; ONNX Runtime {env['onnxruntime']}")
    print(f"predict / bench throughput, median of {args.rounds} paired rounds: {ratio:.3f} (against bench's mean-based "
          f"figure: {ratio_mean:.3f})")  # fmt: skip
    print(f"top-1 {correct / len(results):.2%} on {len(results)} images (manifest {expected:.2%}); peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
