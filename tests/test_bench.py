"""vitdeploy bench: real ONNX Runtime sessions, per-model errors, outputs, no torch import."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitdeploy.bench import measure as bench
from vitdeploy.bench.measure import BenchConfig, Result, add_ratios, baseline_for, measure, median_round, thread_sweep
from vitdeploy.bench.op_profile import CPU_PROVIDER, read_trace
from vitdeploy.bench.table import results_table


def linear_model(path: Path, batch: int | str = "N", width: int = 64, size: int = 8) -> Path:
    """A real (tiny) image classifier graph: flatten, MatMul, Add."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3 * size * size, width)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(width, np.float32), "b")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["pixel_values", "shape"], ["flat"], allowzero=0),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, size, size])],
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
    assert r.throughput == pytest.approx(4 * 1000 / r.latency_p50_ms, rel=1e-6)  # median-based
    assert r.throughput_mean == pytest.approx(4 * 1000 / r.latency_mean_ms, rel=1e-6)
    assert r.parameters == 3 * 8 * 8 * 64 + 64 + 2 and r.int8_share == 0
    assert r.peak_rss_mb > 10 and r.session_create_s > 0 and r.first_run_ms > 0
    assert 0 <= r.model_rss_mb < r.peak_rss_mb


def test_model_memory_counts_the_sessions_weights_not_the_process(tmp_path: Path) -> None:
    """A 49 MB weight matrix shows up in the cell's memory; the interpreter and libraries do not."""
    small = measure(linear_model(tmp_path / "small.onnx", width=64), "cpu", 1, 1, FAST)
    big = measure(linear_model(tmp_path / "big.onnx", width=64_000), "cpu", 1, 1, FAST)
    weights_mb = 3 * 8 * 8 * 64_000 * 4 / 2**20
    assert small.model_rss_mb < 10 < small.peak_rss_mb
    assert weights_mb * 0.9 < big.model_rss_mb < weights_mb * 3


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
    assert baseline_for("m.onnx", names, "some/folder/a.onnx") == "a.onnx"  # as a path, the way models are named


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
    from vitdeploy.torch.timing import measure_torch

    from .conftest import tiny_vit

    model = tiny_vit()
    r = measure_torch("torch:tiny", model, "cpu", 2, 1, FAST)
    assert r.error is None and r.runs == 30 and r.model == "torch:tiny (eager)"
    assert r.parameters == sum(p.numel() for p in model.parameters())
    assert r.model_rss_mb >= 4 * r.parameters / 2**20  # the weights, loaded before the cell began
    assert measure_torch("torch:tiny", model, "tensorrt", 1, 1, FAST).error


def test_profile_attributes_kernel_time_to_op_types(tmp_path: Path) -> None:
    cfg = BenchConfig(warmup=2, duration_s=None, iters=10, profile_dir=tmp_path / "prof", profile_runs=20)
    r = measure(linear_model(tmp_path / "m.onnx", width=256), "cpu", 8, 1, cfg)
    assert r.error is None, r.error
    prof = r.extra["profile"]
    assert prof["runs"] == 20  # warm-up runs are cut from the trace
    ops = {op["op_type"]: op for op in prof["ops"]}
    assert set(ops) == {"Reshape", "Gemm"}  # the session fused MatMul + Add into Gemm
    assert sum(op["share"] for op in prof["ops"]) == pytest.approx(1.0)
    assert prof["ops"][0]["op_type"] == "Gemm" and ops["Gemm"]["nodes"] == 1
    assert prof["nodes_by_provider"] == {CPU_PROVIDER: sum(op["nodes"] for op in prof["ops"])}
    assert r.nodes_on_cpu == prof["nodes_by_provider"][CPU_PROVIDER] and r.note == ""
    traces = list((tmp_path / "prof").glob("m_cpu_b8_t1*.json"))
    assert len(traces) == 1


def test_cpu_placement_is_labelled_as_fallback_for_gpu_providers(tmp_path: Path) -> None:
    cfg = BenchConfig(warmup=1, duration_s=None, iters=5, profile_dir=tmp_path, profile_runs=5)
    assert measure(linear_model(tmp_path / "m.onnx"), "cpu", 2, 1, cfg).error is None
    profile = read_trace(next(tmp_path.glob("m_cpu_*.json")), skip_runs=2)
    # A real trace in which every node ran on the CPU: fine for the CPU provider, and
    # exactly what a CUDA session that placed its INT8 nodes on the CPU looks like.
    assert profile.cpu_time_share == pytest.approx(1.0)
    assert not profile.falls_back(CPU_PROVIDER) and profile.fallback_note(CPU_PROVIDER) == ""
    assert profile.falls_back("CUDAExecutionProvider")
    note = profile.fallback_note("CUDAExecutionProvider")
    assert "Gemm" in note and "not a GPU number" in note
    with pytest.raises(ValueError, match="warm-up"):
        read_trace(next(tmp_path.glob("m_cpu_*.json")), skip_runs=1000)


def test_rounds_report_the_median_round_and_its_spread(tmp_path: Path) -> None:
    from rich.progress import Progress

    cfg = BenchConfig(warmup=1, duration_s=None, iters=20, rounds=3)
    with Progress() as bar:
        (r,) = bench.run_grid(bench.onnx_cells([linear_model(tmp_path / "m.onnx")], cfg), cfg, bar)
    speeds = r.extra["round_throughputs"]
    assert len(speeds) == 3 and speeds == sorted(speeds) and r.throughput == pytest.approx(speeds[1], abs=0.01)
    assert r.round_spread == pytest.approx((speeds[2] - speeds[0]) / speeds[1], rel=1e-4)


def test_median_round_keeps_a_failed_round_visible() -> None:
    ok = [Result("m", "cpu", 1, 1, throughput=t) for t in (10.0, 12.0)]
    bad = Result("m", "cpu", 1, 1)
    bad.fail(RuntimeError("device lost"))
    chosen = median_round([bad, *ok])
    assert chosen.throughput == 10.0 and "1 of 3 rounds failed" in chosen.note and "device lost" in chosen.note


def test_speedup_pairs_rounds_so_machine_drift_cancels() -> None:
    # The machine got 2x slower between rounds; the model is 1.5x its baseline in every round.
    base = Result("m.fp32.onnx", "cpu", 1, 1, throughput=150.0, extra={"round_series": [100.0, 50.0, 200.0]})
    fast = Result("m.onnx", "cpu", 1, 1, throughput=150.0, extra={"round_series": [150.0, 75.0, 300.0]})
    add_ratios([base, fast], None)
    assert fast.extra["speedup"] == pytest.approx(1.5)  # the ratio of the two medians says 1.0
    base.extra["round_series"][1] = None  # a failed baseline round is left out of the pairs
    add_ratios([base, fast], None)
    assert fast.extra["speedup"] == pytest.approx(1.5)


def test_torch_reference_shares_the_rounds_of_the_onnx_cells(tmp_path: Path, cifar10: Path) -> None:
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    from .conftest import TINY_OVERRIDES

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"name: tiny\nmodel:\n  name: vit_tiny_patch16_224\n  overrides: {json.dumps(TINY_OVERRIDES)}\n")
    linear_model(tmp_path / "m.onnx")
    args = ["bench", str(tmp_path / "m.onnx"), "--torch", str(recipe), "--rounds", "2", "--iters", "5", "--warmup", "1",
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    torch_row = next(r for r in rows if r["model"] == "torch:tiny (eager)")
    assert len(torch_row["x_round_throughputs"]) == 2 and torch_row["x_speedup"] > 0
    assert torch_row["x_baseline"] == "m.onnx" and torch_row["runs"] == 5


@pytest.mark.parametrize("use_kernel_peak", [True, False])
def test_peak_rss_sees_a_transient_allocation_and_forgets_earlier_peaks(monkeypatch, use_kernel_peak: bool) -> None:
    if not use_kernel_peak:  # the sampling thread, as on systems without /proc/self/clear_refs
        monkeypatch.setattr(bench.PeakRSS, "_reset_kernel_peak", staticmethod(lambda: False))
    elif not bench.PeakRSS._reset_kernel_peak():
        pytest.skip("this kernel cannot reset VmHWM")
    earlier = np.ones(400 * 2**20 // 8)  # a 400 MB peak before the block must not count
    del earlier
    with bench.PeakRSS() as quiet:
        pass
    with bench.PeakRSS(interval_s=0.005) as busy:
        block = np.ones(200 * 2**20 // 8)  # touched, so resident
        time.sleep(0.05)
        del block
    assert busy.peak_mb - quiet.peak_mb > 150
    assert quiet.peak_mb < busy.peak_mb < quiet.peak_mb + 300


def test_openvino_cells_are_timed_and_scored_like_onnx_runtime_cells(tmp_path: Path, cifar10: Path) -> None:
    pytest.importorskip("openvino")
    model = linear_model(tmp_path / "m.onnx", width=10)
    r = measure(model, "openvino", 4, 1, FAST)
    assert r.error is None and r.runs == 30 and r.throughput > 0
    assert r.throughput == pytest.approx(4 * 1000 / r.latency_p50_ms, rel=1e-6)
    from vitdeploy.runtime.sessions import open_predictor

    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model)).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(open_predictor(model, "openvino")(x), expected, rtol=1e-4, atol=1e-4)


def test_a_model_openvino_cannot_read_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    path = linear_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.node[1].op_type, model.graph.node[1].domain = "NoSuchOp", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, str(path))
    r = measure(path, "openvino", 1, 1, FAST)
    assert r.error is not None and "OpenVINO cannot run this model" in r.error


def test_environment_names_the_cpu_isa() -> None:
    env = bench.environment(BenchConfig(providers=("cpu", "openvino")))
    assert set(env["cpu_isa"]) >= {"avx2", "avx512_vnni", "avx_vnni", "avx512_bf16"}
    assert env["cpu_isa"]["avx2"] == ("avx2" in Path("/proc/cpuinfo").read_text())


def test_bracketed_rounds_pair_each_model_with_a_baseline_run_right_before_it() -> None:
    from rich.progress import Progress

    from vitdeploy.bench.measure import BenchConfig, Result, paired_speedup, run_grid

    calls = []

    def cell(name: str, speed: float):
        def measure_round(cfg: BenchConfig) -> Result:
            machine = 2.0 if (len(calls) // 2) % 3 == 0 else 1.0  # the machine changes speed every pair
            calls.append(name)
            return Result(model=name, provider="cpu", batch=1, threads=None, throughput=speed * machine)

        return name, measure_round

    cells = [cell("base.onnx", 100.0), cell("fast.onnx", 150.0), cell("slow.onnx", 50.0)]
    results = run_grid(cells, BenchConfig(rounds=4), Progress(disable=True), {1: 0, 2: 0})
    assert calls[:4] == ["base.onnx", "fast.onnx", "base.onnx", "slow.onnx"]
    base, fast, slow = results
    assert fast.extra["bracket_ratios"] == [1.5] * 4 and paired_speedup(fast, base) == 1.5
    assert paired_speedup(slow, base) == 0.5
    # the same model on another provider is another baseline: its rounds pair, the brackets do not
    other = Result("base.onnx", "openvino", 1, None, throughput=100.0, extra={"round_series": [75.0] * 4})
    fast.extra["round_series"] = [150.0] * 4
    assert paired_speedup(fast, other) == 2.0


def test_the_table_shows_and_explains_only_columns_some_row_fills() -> None:
    from rich.console import Console

    fast = Result("m.onnx", "cpu", 1, 1, throughput=200.0, runs=5, extra={"speedup": 2.0, "size_ratio": 0.3})
    base = Result("m.fp32.onnx", "cpu", 1, 1, throughput=100.0, runs=5, extra={"speedup": 1.0, "size_ratio": 1.0})
    console = Console(width=300, record=True)
    console.print(results_table([fast, base]))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "model" in line and "img/s" in line)
    words = " ".join(text.split())  # the caption wraps at the table's width
    assert "speedup" in header and "2.00x" in text and "speedup: throughput against the baseline" in words
    for empty in ("top-1", "spread", "note"):  # no accuracy, one round, no fallback: no such column
        assert empty not in header and f"{empty}:" not in words
    assert text.index("m.onnx") < text.index("m.fp32.onnx")  # fastest first


def has_native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_bf16_computes_in_bfloat16_where_the_cpu_has_it_and_refuses_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from vitdeploy.runtime.sessions import open_predictor

    model = linear_model(tmp_path / "m.onnx", width=10)
    r = measure(model, "openvino-bf16", 4, 1, FAST)
    if not has_native_bf16():
        assert r.error is not None and "no bfloat16 support" in r.error
        return
    assert r.error is None and r.runs == 30
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    f32, bf16 = open_predictor(model, "openvino")(x), open_predictor(model, "openvino-bf16")(x)
    assert not np.array_equal(f32, bf16)  # the precision reached OpenVINO: bf16 rounds the products
    np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.5)  # 192 products of 8-bit mantissas


def test_each_openvino_precision_is_scored_on_its_own_and_onnx_runtime_once(tmp_path: Path, cifar10: Path) -> None:
    pytest.importorskip("openvino")
    from rich.progress import Progress

    model = linear_model(tmp_path / "m.onnx", width=10, size=32)
    providers = ("cpu", "openvino", "openvino-bf16") if has_native_bf16() else ("cpu", "openvino")
    results = [Result("m.onnx", p, 1, 1, throughput=1.0) for p in providers]
    results.append(Result("m.onnx", "cpu", 4, 1, throughput=1.0))  # same function as batch 1: not scored again
    with Progress(disable=True) as bar:
        bench.add_accuracy(results, [model], "cifar10:test", bar)
        scored = sorted(t.description for t in bar.tasks)
    assert scored == sorted(f"top-1 m.onnx ({p})" for p in providers)
    assert all(r.top1 is not None and 0.0 <= r.top1 <= 1.0 for r in results)
    assert results[0].top1 == results[-1].top1


def test_provider_names_are_checked_before_anything_runs() -> None:
    from typer.testing import CliRunner

    from vitdeploy.cli import app
    from vitdeploy.core.errors import UserError
    from vitdeploy.core.providers import PROVIDERS, choices_help, provider_list

    assert provider_list(" cpu,openvino-bf16 ") == ("cpu", "openvino-bf16")
    with pytest.raises(UserError, match="unknown provider 'npu'; choose from cpu, cuda, tensorrt, openvino"):
        provider_list("cpu,npu")
    assert all(name in choices_help() for name in PROVIDERS)
    res = CliRunner().invoke(app, ["bench", "missing.onnx", "--provider", "openvino-fp8"])
    assert res.exit_code != 0 and "unknown provider 'openvino-fp8'" in res.output


def test_at_a_terminals_width_the_table_drops_the_least_telling_columns_and_says_so() -> None:
    from rich.console import Console

    cells = [
        Result(f"model_{i}.onnx", "cpu", 16, 2, throughput=1000.0 * (i + 1), latency_p50_ms=6.5, latency_p99_ms=7.5,
               runs=150, file_bytes=1_960_000, int8_share=0.99, model_rss_mb=17, top1=0.7787,
               extra={"speedup": 1.0 + i, "size_ratio": 0.27})
        for i in range(2)
    ]  # fmt: skip
    wide, narrow = Console(width=200, record=True), Console(width=80, record=True)
    wide.print(results_table(cells))
    narrow.print(results_table(cells, width=80))
    assert max(len(line) for line in wide.export_text().splitlines()) > 80  # it would not fit
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if "model" in line and "img/s" in line)
    assert all(c in header for c in ("img/s", "top-1", "speedup")) and "runs" not in header
    assert "Left out to fit the terminal: runs" in " ".join(text.split())
    assert "cpu · batch 16 · 2 threads" in text and "2.00x" in text


def test_baseline_given_as_a_path_is_the_one_every_speedup_uses(tmp_path: Path) -> None:
    """`--baseline` names a model the way the models were given (a path), and a name that is none
    of them is refused before anything is measured."""
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    small, big = linear_model(tmp_path / "small.onnx", width=16), linear_model(tmp_path / "big.onnx", width=256)
    args = ["bench", str(small), str(big), "--iters", "20", "--warmup", "2", "--json", str(tmp_path / "r.json")]
    done = CliRunner().invoke(app, [*args, "--baseline", str(big)])
    assert done.exit_code == 0, done.output
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {r["x_baseline"] for r in rows} == {"big.onnx"}
    refused = CliRunner().invoke(app, [*args, "--baseline", str(tmp_path / "other.onnx")])
    assert refused.exit_code == 2 and "not one of the models benchmarked (small.onnx, big.onnx)" in refused.output


def test_int8_no_faster_than_its_fp32_file_is_warned_about_and_faster_int8_is_not() -> None:
    base = Result("m.fp32.onnx", "cpu", 1, 1, throughput=100.0, extra={"round_series": [100.0, 100.0, 100.0]})
    slow = Result("m.onnx", "cpu", 1, 1, throughput=96.0, int8_share=0.9, extra={"round_series": [97.0, 96.0, 95.0]})
    fast_base = Result("m.fp32.onnx", "cpu", 16, 1, throughput=100.0, extra={"round_series": [100.0, 100.0]})
    fast = Result("m.onnx", "cpu", 16, 1, throughput=140.0, int8_share=0.9, extra={"round_series": [140.0, 140.0]})
    float_copy = Result("n.onnx", "cpu", 1, 1, throughput=90.0, extra={"round_series": [90.0, 90.0, 90.0]})
    results = [base, slow, fast_base, fast, float_copy]
    add_ratios(results, "m.fp32.onnx")
    warnings = bench.int8_no_faster(results)
    assert len(warnings) == 1 and "m.onnx (INT8) runs no faster than m.fp32.onnx on cpu at batch 1 (0.96x)" in warnings[0]
    peer = Result("p.onnx", "cpu", 1, 1, throughput=100.0, int8_share=0.9, extra={"round_series": [100.0, 100.0, 100.0]})
    add_ratios([peer, slow], "p.onnx")  # against another INT8 model: slower, but FP32 is no answer
    assert bench.int8_no_faster([peer, slow]) == []
