"""The GPU run (benchmarks/gpu/run.sh) rehearsed on the CPU: every step of the one GPU call runs
here on tiny models, so that call cannot fail on a typo, a changed option or a missing file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


def test_the_gpu_runs_recipes_are_valid_as_written_for_the_gpu(tmp_path: Path) -> None:
    written = subprocess.run([sys.executable, "benchmarks/gpu/recipes.py", str(tmp_path), "--teacher-minutes", "4"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert len(written) == 6
    for recipe in written:
        done = subprocess.run([sys.executable, "-m", "vitdeploy.cli", "check", recipe], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    teacher = (tmp_path / "teacher_vit_cifar10.yaml").read_text()
    assert "max_minutes: 4.0" in teacher and "/teachers/" not in teacher  # the GPU teacher trains from scratch
    assert str(ROOT / "teachers" / "vit_cifar10.safetensors") in (tmp_path / "vit_static_int8.yaml").read_text()


def test_the_gpu_run_rehearsed_on_the_cpu_runs_every_step(tmp_path: Path) -> None:
    data, out, work = image_folder(tmp_path / "data"), tmp_path / "out", tmp_path / "work"
    python = Path(sys.executable).parent  # run.sh calls python3: this one
    env = os.environ | {"OUT": str(out), "GPU_WORK": str(work), "BUDGET_S": "900", "PATH": f"{python}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run", str(data)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = (out / "progress.log").read_text()
    assert done.returncode == 0, log + done.stderr[-2000:]
    steps = [line.split("\t") for line in (work / "results" / "steps.tsv").read_text().splitlines()]
    failed = [name for name, rc, _ in steps if rc != "0"]
    assert not failed, f"failed: {failed}\n{log}"
    assert {"bench_iobinding", "bench_torch_vit_base_gpu_fp32", "bench_reference", "agreement_teacher", "teacher"} <= {
        name for name, _, _ in steps
    }
    with tarfile.open(out / "results.tar.gz") as tar:  # what comes back from the GPU machine
        names = set(tar.getnames())
    assert "results/bench_iobinding.json" in names and "results/fp16_teacher.json" in names
    bench = json.loads((work / "results" / "bench_torch_vit_base_gpu_fp32.json").read_text())["results"]
    assert {r["model"].split(" ")[0] for r in bench} == {"vit_base_gpu_fp32.fp16.onnx", "torch:vit_base_gpu_fp32"}
    assert all(r["error"] is None and r["throughput"] > 0 for r in bench)
    agreement = json.loads((work / "results" / "fp16_teacher.json").read_text())
    assert agreement["images"] == 20 and agreement["top1_agreement"] == 1.0 and agreement["max_abs_logit_diff"] < 1e-2
    assert (out / "teacher_vit_cifar10.safetensors").stat().st_size > 0
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most eight files
