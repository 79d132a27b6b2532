"""Interrupted builds: real signals sent to real build processes at random points.

Every interrupted build must leave its cache and output folder consistent, and rerunning it
must end with exactly the files an uninterrupted build writes (the build is deterministic
on CPU, so the ONNX files and weights are compared byte for byte).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from vitdeploy.core.storage import sha256_file

from .conftest import TINY_OVERRIDES

RECIPE = {
    "name": "resumable",
    "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES},
    "stages": [
        {
            "stage": "finetune",
            "epochs": 2,
            "batch_size": 64,
            "train_samples": 1536,
            "eval_samples": 100,
            "warmup_epochs": 0.5,
            "num_threads": 1,
        },
    ],
    "export": {"parity_samples": 64},
    "quantize": {"mode": "static", "calibration": {"samples": 64}},
    "evaluate": {"samples": 300},
    "output": {"dir": "out"},
}
OUTPUTS = ("resumable.onnx", "resumable.fp32.onnx", "resumable.safetensors")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
KILLS = 12  # four per signal, at random points of the stages


def start_build(folder: Path, *extra: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    cmd = [sys.executable, "-m", "vitdeploy.cli", "build", "recipe.yaml", "--device", "cpu", "--checkpoint-every", "0", *extra]
    env = os.environ | {"COLUMNS": "100"}
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_stages(proc: subprocess.Popen) -> tuple[threading.Event, list[str]]:
    """An event set once the build starts its stages (imports done), and its stderr lines."""
    started, lines = threading.Event(), []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "stages" in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    return started, lines


def finish(folder: Path) -> dict:
    proc = start_build(folder)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    return {name: sha256_file(folder / "out" / name) for name in OUTPUTS}


def assert_consistent(folder: Path, clean_exit: bool) -> None:
    out = folder / "out"
    if not out.exists():
        return
    manifest = out / "resumable.json"
    if manifest.exists():
        records = json.loads(manifest.read_text())["artifacts"]
        for record in records.values():
            assert sha256_file(out / record["file"]) == record["sha256"], f"manifest does not describe {record['file']}"
    for stage in (out / ".work" / "resumable").glob("*-*-*"):
        if (stage / "report.json").exists():
            json.loads((stage / "report.json").read_text())
            with safe_open(str(stage / "model.safetensors"), "pt") as f:
                assert f.keys()
        if (stage / "last.pt").exists():
            assert "progress" in torch.load(stage / "last.pt", weights_only=True)
    if clean_exit:  # Ctrl-C and SIGTERM unwind: no temporary file stays behind
        assert not [p for p in out.rglob("*.tmp")]


@pytest.fixture
def ctrl_c_reaches_builds() -> Iterator[None]:
    """A test run started as a background job ignores Ctrl-C, and the builds it starts would
    inherit that; a handler here instead becomes the default disposition in them."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # 12 real kills: about 2 of the suite's 9 minutes
@pytest.mark.usefixtures("ctrl_c_reaches_builds")
def test_builds_killed_at_random_points_resume_to_identical_outputs(cifar10: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = start_build(tmp_path / "reference")
    started, _ = wait_for_stages(proc)
    started.wait(300)
    t_stages = time.perf_counter()
    proc.wait(300)
    assert proc.returncode == 0
    span = time.perf_counter() - t_stages  # from the stages to the manifest
    reference = {name: sha256_file(tmp_path / "reference" / "out" / name) for name in OUTPUTS}
    assert time.perf_counter() - t0 < 120

    rng = random.Random(0)
    delays = [rng.uniform(0.0, 0.95 * span) for _ in range(KILLS)]

    def interrupt(folder: Path, sig: signal.Signals, delay: float) -> bool:
        """Start a build, signal it `delay` s into its stages; False if it finished first."""
        proc = start_build(folder)
        started, lines = wait_for_stages(proc)
        started.wait(300)
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(120)
        if proc.returncode == 0:
            return False
        if sig != signal.SIGKILL:
            assert proc.returncode in (130, -sig), "".join(lines)[-2000:]
            assert "Traceback" not in "".join(lines)
        return True

    def trial(i: int) -> tuple[int, str, float]:
        folder = tmp_path / f"trial{i}"
        sig, delay = SIGNALS[i % len(SIGNALS)], delays[i]
        for _ in range(12):
            if interrupt(folder, sig, delay):
                break
            shutil.rmtree(folder)  # finished before the signal: an earlier point
            delay /= 2
        else:
            raise AssertionError(f"trial {i}: {sig.name} never stopped a build")
        assert_consistent(folder, clean_exit=sig != signal.SIGKILL)
        assert finish(folder) == reference, f"trial {i}: resumed build differs"
        return i, sig.name, delay

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(trial, range(KILLS)))
    assert len(results) == KILLS  # every kill: a consistent state, an identical resume


def test_fresh_ignores_the_cache_and_clean_removes_it(cifar10: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    first = finish(folder)
    proc = start_build(folder, "--fresh")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "reusing" not in stderr
    assert {name: sha256_file(folder / "out" / name) for name in OUTPUTS} == first
    proc = start_build(folder)
    _, stderr = proc.communicate(timeout=300)
    assert "reusing" in stderr
    done = subprocess.run(
        [sys.executable, "-m", "vitdeploy.cli", "clean", "recipe.yaml"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0 and "removed" in done.stdout
    assert not (folder / "out" / ".work" / "resumable").exists()
    assert (folder / "out" / "resumable.onnx").exists()  # artifacts stay
