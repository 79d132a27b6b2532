"""vitdeploy bench: real ONNX Runtime sessions, per-model errors, outputs, no torch import."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitdeploy.bench import BenchConfig, add_ratios, baseline_for, measure, thread_sweep


def linear_model(path: Path, batch: int | str = "N", width: int = 64) -> Path:
    """A real (tiny) image classifier graph: flatten, MatMul, Add."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3 * 8 * 8, width)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(width, np.float32), "b")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["pixel_values", "shape"], ["flat"], allowzero=0),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, width])],
        [w, b, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


FAST = BenchConfig(warmup=2, duration_s=None, iters=30)


def test_measure_reports_consistent_statistics(tmp_path: Path) -> None:
    r = measure(linear_model(tmp_path / "m.onnx"), "cpu", 4, 1, FAST)
    assert r.error is None
    assert r.runs == 30
    assert r.latency_p50_ms <= r.latency_p90_ms <= r.latency_p99_ms <= r.latency_max_ms
    assert r.throughput == pytest.approx(4 * 1000 / r.latency_mean_ms, rel=1e-6)
    assert r.parameters == 3 * 8 * 8 * 64 + 64 + 2 and r.int8_share == 0
    assert r.peak_rss_mb > 10 and r.session_create_s > 0 and r.first_run_ms > 0


def test_duration_mode_honours_min_iters(tmp_path: Path) -> None:
    r = measure(linear_model(tmp_path / "m.onnx"), "cpu", 1, 1, BenchConfig(warmup=1, duration_s=0.0, min_iters=120))
    assert r.runs == 120


@pytest.mark.parametrize(
    ("setup", "provider", "batch", "says"),
    [
        (lambda p: linear_model(p), "npu", 1, "unknown provider 'npu'"),
        (lambda p: linear_model(p, batch=1), "cpu", 8, "fixed batch 1"),
        (lambda p: (p.write_text("not a model"), p)[1], "cpu", 1, "not a readable ONNX model"),
    ],
)
def test_bad_cells_are_reported_not_raised(tmp_path: Path, setup, provider: str, batch: int, says: str) -> None:
    r = measure(setup(tmp_path / "m.onnx"), provider, batch, 1, FAST)
    assert r.error and says in r.error


def test_missing_provider_is_skipped_with_reason(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is installed here")
    r = measure(linear_model(tmp_path / "m.onnx"), "tensorrt", 1, 1, FAST)
    assert "not available" in r.error and "skipped" in r.error


def test_thread_sweep_and_baselines() -> None:
    assert thread_sweep("") == (None,)
    assert thread_sweep("3,1") == (3, 1)
    assert thread_sweep("sweep")[0] == 1
    names = ["a.onnx", "m.fp32.onnx", "m.onnx"]
    assert baseline_for("m.onnx", names, None) == "m.fp32.onnx"
    assert baseline_for("a.onnx", names, None) == "a.onnx"
    assert baseline_for("m.fp32.onnx", ["a.onnx", "m.fp32.onnx"], None) == "m.fp32.onnx"
    assert baseline_for("m.onnx", names, "a") == "a.onnx"


def test_ratios_compare_within_the_same_cell(tmp_path: Path) -> None:
    small = measure(linear_model(tmp_path / "m.onnx", width=16), "cpu", 2, 1, FAST)
    big = measure(linear_model(tmp_path / "m.fp32.onnx", width=512), "cpu", 2, 1, FAST)
    add_ratios([small, big], None)
    assert small.extra["baseline"] == "m.fp32.onnx"
    assert small.extra["size_ratio"] == pytest.approx(small.file_bytes / big.file_bytes)
    assert big.extra["speedup"] == pytest.approx(1.0)


def test_cli_bench_writes_json_csv_and_never_imports_torch(tmp_path: Path) -> None:
    linear_model(tmp_path / "good.onnx")
    (tmp_path / "bad.onnx").write_text("garbage")
    code = (
        "import sys\n"
        "from vitdeploy.cli import app\n"
        f"args = ['bench', '{tmp_path}/*.onnx', '--batch', '1,2', '--iters', '20', '--warmup', '2',\n"
        f"        '--json', '{tmp_path}/r.json', '--csv', '{tmp_path}/r.csv']\n"
        "try:\n"
        "    app(args, prog_name='vitdeploy')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'bench imported torch'\n"
        "print('TORCH-FREE')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TORCH-FREE" in res.stdout and "good.onnx" in res.stdout
    assert "bad.onnx" in res.stderr  # reported, while good.onnx was still measured
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["environment"]["logical_cores"] >= 1 and report["environment"]["onnxruntime"]
    good = [r for r in report["results"] if r["model"] == "good.onnx"]
    assert sorted(r["batch"] for r in good) == [1, 2] and all(r["runs"] == 20 for r in good)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 4 and {"throughput", "latency_p99_ms", "error"} <= set(rows[0])


def test_torch_reference_is_timed_like_onnx_cells() -> None:
    from vitdeploy.bench_torch import measure_torch

    from .conftest import tiny_vit

    model = tiny_vit()
    r = measure_torch("torch:tiny", model, "cpu", 2, 1, FAST)
    assert r.error is None and r.runs == 30 and r.model == "torch:tiny (eager)"
    assert r.parameters == sum(p.numel() for p in model.parameters())
    assert measure_torch("torch:tiny", model, "tensorrt", 1, 1, FAST).error
