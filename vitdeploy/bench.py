"""Throughput and latency of ONNX models on ONNX Runtime execution providers.

No torch import here: `vitdeploy bench` runs where only onnxruntime is installed.
Each (model, provider, batch, threads) cell gets its own session; warm-up runs are
excluded; every timed run is kept so percentiles come from real samples, and the number of
runs is reported beside them.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from rich.progress import Progress
from rich.table import Table

from vitdeploy.graph import read_preprocess, weight_stats

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class BenchConfig:
    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)  # None: ORT's default (all physical cores)
    warmup: int = 10
    duration_s: float | None = 5.0
    iters: int | None = None
    min_iters: int = 100  # so that p99 rests on at least one sample beyond the 99th
    include_copies: bool = False  # CUDA: time host<->device copies too
    seed: int = 0


@dataclass
class Result:
    model: str
    provider: str
    batch: int
    threads: int | None
    file_bytes: int = 0
    parameters: int = 0
    int8_share: float = 0.0
    runs: int = 0
    throughput: float = 0.0
    latency_mean_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    session_create_s: float = 0.0
    first_run_ms: float = 0.0
    peak_rss_mb: float = 0.0
    peak_device_mb: float | None = None
    top1: float | None = None
    nodes_on_cpu: int | None = None
    note: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def time_runner(self, run: Callable[[], object], cfg: BenchConfig) -> None:
        """First run, warm-up, timed runs and their statistics: the same for every cell kind."""
        t0 = time.perf_counter()
        run()
        self.first_run_ms = 1000 * (time.perf_counter() - t0)
        self.fill_latencies(timed_runs(run, cfg), self.batch)

    def fail(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]

    def fill_latencies(self, seconds: list[float], batch: int) -> None:
        ms = sorted(1000 * t for t in seconds)
        self.runs = len(ms)
        self.throughput = batch * len(ms) / (sum(ms) / 1000)
        self.latency_mean_ms = statistics.fmean(ms)
        self.latency_p50_ms = percentile(ms, 50)
        self.latency_p90_ms = percentile(ms, 90)
        self.latency_p99_ms = percentile(ms, 99)
        self.latency_max_ms = ms[-1]

    def as_row(self) -> dict:
        row = asdict(self)
        row.pop("extra")
        return row | {f"x_{k}": v for k, v in self.extra.items()}


def thread_sweep(spec: str) -> tuple[int | None, ...]:
    """'sweep' -> 1, 2 and every core; '4' -> 4; '' -> ORT's default."""
    if not spec:
        return (None,)
    if spec == "sweep":
        return tuple(sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}))
    return tuple(int(t) for t in spec.split(","))


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    return opts


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak_mb` is the largest seen."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def model_input(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    inp = session.get_inputs()[0]
    dims = list(inp.shape)
    if isinstance(dims[0], int) and dims[0] != batch:
        raise ValueError(f"model input '{inp.name}' has a fixed batch {dims[0]}, cannot run batch {batch}")
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(f"model input '{inp.name}' has dynamic dims {dims[1:]}; give a fixed-size model")
    if inp.type != "tensor(float)":
        raise ValueError(f"model input '{inp.name}' is {inp.type}; bench feeds float32 images")
    return inp.name, rng.standard_normal([batch, *dims[1:]], dtype=np.float32)


def timed_runs(run: Callable[[], object], cfg: BenchConfig) -> list[float]:
    """Seconds per run, after warm-up, until duration and min_iters (or exactly iters) are met."""
    for _ in range(cfg.warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t0) / 1e9)
        if cfg.iters is not None:
            if len(times) >= cfg.iters:
                return times
        elif time.perf_counter() - start >= (cfg.duration_s or 0) and len(times) >= cfg.min_iters:
            return times


def percentile(sorted_ms: list[float], q: float) -> float:
    return float(np.percentile(sorted_ms, q, method="linear"))


def measure(path: Path, provider: str, batch: int, threads: int | None, cfg: BenchConfig) -> Result:
    """One cell of the grid. Errors are returned in the result, never raised."""
    result = Result(model=path.name, provider=provider, batch=batch, threads=threads)
    try:
        result.file_bytes = path.stat().st_size
        try:
            stats = weight_stats(onnx.load(str(path), load_external_data=False))
        except Exception as e:
            raise ValueError(f"not a readable ONNX model ({type(e).__name__}: {e})") from None
        result.parameters, result.int8_share = stats["parameters"], stats["int8_share"]
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider '{provider}'; choose from {', '.join(PROVIDERS)}")
        ep = PROVIDERS[provider]
        if ep not in ort.get_available_providers():
            raise RuntimeError(f"{ep} is not available in this onnxruntime ({ort.__version__}); skipped")
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            session = ort.InferenceSession(str(path), session_options(threads), providers=[ep])
            result.session_create_s = time.perf_counter() - t0
            name, x = model_input(session, batch, np.random.default_rng(cfg.seed))
            result.time_runner(make_runner(session, name, x, provider, cfg.include_copies), cfg)
        result.peak_rss_mb = rss.peak_mb
    except Exception as e:  # per-model report: the other models are still measured
        result.fail(e)
    return result


def make_runner(session: ort.InferenceSession, name: str, x: np.ndarray, provider: str, include_copies: bool):
    """A zero-argument callable doing one inference; device-resident I/O on GPU providers."""
    if provider == "cpu" or include_copies:
        feeds = {name: x}
        return lambda: session.run(None, feeds)
    # IO binding keeps input and output on the device, so host copies are not timed.
    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run() -> None:
        session.run_with_iobinding(binding)

    return run


def baseline_for(name: str, names: list[str], explicit: str | None) -> str:
    """`--baseline` if given; else the FP32 model of the same name (x.fp32.onnx); else the first."""
    if explicit:
        match = [n for n in names if n == explicit or Path(n).stem == explicit]
        if match:
            return match[0]
    if name.endswith(".fp32.onnx"):
        return name
    fp32 = f"{name.removesuffix('.onnx')}.fp32.onnx"
    return fp32 if fp32 in names else names[0]


def add_ratios(results: list[Result], explicit_baseline: str | None) -> None:
    """Speedup and size ratio of each result against its baseline in the same grid cell."""
    names = list(dict.fromkeys(r.model for r in results))
    cell = {(r.model, r.provider, r.batch, r.threads): r for r in results if not r.error}
    for r in results:
        base_name = baseline_for(r.model, names, explicit_baseline)
        base = cell.get((base_name, r.provider, r.batch, r.threads))
        r.extra["baseline"] = base_name
        if base and not r.error and base.throughput:
            r.extra["speedup"] = r.throughput / base.throughput
            if r.file_bytes and base.file_bytes:  # a PyTorch reference has no file
                r.extra["size_ratio"] = r.file_bytes / base.file_bytes


def environment(cfg: BenchConfig) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_mode": "sequential",
        "inter_op_threads": 1,
        "cpu_mem_arena": True,
        "config": asdict(cfg),
    }


def write_csv(path: Path, results: list[Result]) -> None:
    rows = [r.as_row() for r in results]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def run_grid(paths: list[Path], cfg: BenchConfig, bar: Progress) -> list[Result]:
    cells = [(p, prov, b, t) for p in paths for prov in cfg.providers for b in cfg.batches for t in cfg.threads]
    task = bar.add_task("benchmarking", total=len(cells))
    results = []
    for path, prov, b, t in cells:
        bar.update(task, info=f"{path.name} {prov} b{b}" + (f" t{t}" if t else ""))
        results.append(measure(path, prov, b, t, cfg))
        bar.advance(task)
    return results


def add_accuracy(results: list[Result], paths: list[Path], data: str, bar: Progress, batch_size: int = 100) -> None:
    """Top-1 of each model (CPU provider) on real images, with the preprocessing it carries."""
    from vitdeploy.data import DataStore, batches, decode_imagefolder, preprocess

    if ":" in data or not Path(data).exists():
        name, _, split = data.partition(":")
        images = DataStore().load(name, split or "test")
    else:
        folder = Path(data)
        images = decode_imagefolder(folder.parent, {folder.name})[folder.name]
    for path in paths:
        try:
            pre, size = read_preprocess(onnx.load(str(path), load_external_data=False))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            correct = 0
            task = bar.add_task(f"top-1 {path.name}", total=len(images))
            for x, y in batches(images, batch_size):
                logits = session.run(None, {name: preprocess(x, pre, size)})[0]
                correct += int((logits.argmax(1) == y).sum())
                bar.advance(task, len(y))
            acc: float | None = correct / len(images)
        except Exception as e:
            acc = None
            for r in results:
                if r.model == path.name:
                    r.note = f"top-1 failed: {e}"[:200]
        for r in results:
            if r.model == path.name:
                r.top1 = acc


def results_table(results: list[Result]) -> Table:
    table = Table(title="vitdeploy bench", caption="sorted by throughput; ratios against each row's baseline")
    cols = ("model", "provider", "batch", "threads", "img/s", "p50 ms", "p99 ms", "runs", "MB", "int8 %",
            "RSS MB", "top-1", "speedup", "size")  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "provider") else "right")
    for r in sorted((r for r in results if not r.error), key=lambda r: -r.throughput):
        speed, size = r.extra.get("speedup"), r.extra.get("size_ratio")
        table.add_row(
            r.model, r.provider, str(r.batch), str(r.threads or "default"), f"{r.throughput:,.0f}",
            f"{r.latency_p50_ms:.2f}", f"{r.latency_p99_ms:.2f}", str(r.runs), f"{r.file_bytes / 1e6:.2f}",
            f"{100 * r.int8_share:.0f}", f"{r.peak_rss_mb:.0f}", "" if r.top1 is None else f"{r.top1:.2%}",
            "" if speed is None else f"{speed:.2f}x", "" if size is None else f"{size:.2f}x",
        )  # fmt: skip
    return table
