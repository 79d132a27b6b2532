"""Throughput and latency of ONNX models on ONNX Runtime execution providers.

No torch import here: `vitdeploy bench` runs where only onnxruntime is installed.
Each (model, provider, batch, threads) cell gets its own session; warm-up runs are
excluded; every timed run is kept so percentiles come from real samples, and the number of
runs is reported beside them.

Throughput is batch / median latency. A shared 2-core VM is slowed for a few milliseconds
at a time by its neighbours; the median ignores those stalls where the mean absorbs them.
With `rounds > 1` every cell is measured that many times, round-robin over the grid, so
slow drift of the machine hits all models alike; the median round is reported and the
spread between rounds is kept beside it. The mean-based figure is kept as well.

Over 500 lines: the timing grid, paired rounds, memory and the accuracy column, which share the
Result record. The next split: the accuracy column (add_accuracy) beside bench's table.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import psutil
from rich.progress import Progress

from vitdeploy.bench.op_profile import OpProfile, read_trace
from vitdeploy.core.memory import release_freed_memory
from vitdeploy.core.providers import PROVIDERS, get_provider
from vitdeploy.onnx.graph import load_checked, read_preprocess, token_count, weight_stats
from vitdeploy.runtime import sessions
from vitdeploy.runtime.backends import backend_for
from vitdeploy.runtime.backends.base import TimedModel, TimingSettings
from vitdeploy.runtime.environment import machine_record


@dataclass(frozen=True)
class BenchConfig:
    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)  # None: ORT's default (all physical cores)
    warmup: int = 10
    duration_s: float | None = 5.0
    iters: int | None = None
    min_iters: int = 100  # so that p99 rests on at least one sample beyond the 99th
    rounds: int = 1  # measure each cell this often, round-robin; report the median round
    include_copies: bool = False  # CUDA: time host<->device copies too
    cuda_graph: bool = False  # CUDA: capture the run once as a CUDA graph and replay it
    profile_dir: Path | None = None  # write ORT per-op profiles here
    profile_runs: int = 50
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
    throughput: float = 0.0  # batch / median latency; of the median round when rounds > 1
    throughput_mean: float = 0.0  # batch x runs / total time
    round_spread: float | None = None  # (max - min) / median of the rounds' throughputs
    latency_mean_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    session_create_s: float = 0.0
    first_run_ms: float = 0.0
    peak_rss_mb: float = 0.0  # the whole process (interpreter, libraries, a loaded torch too)
    model_rss_mb: float = 0.0  # what this cell added: its session (weights, arena) and runs
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

    @property
    def falls_back(self) -> bool:
        return self.note.startswith("CPU fallback")

    def fail(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]

    def fill_latencies(self, seconds: list[float], batch: int) -> None:
        ms = sorted(1000 * t for t in seconds)
        self.runs = len(ms)
        self.throughput_mean = batch * len(ms) / (sum(ms) / 1000)
        self.throughput = batch / (percentile(ms, 50) / 1000)
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


class PeakRSS:
    """This process's peak resident memory over a `with` block; `peak_mb` after it closes.

    On Linux the kernel keeps the high-water mark (VmHWM) and resets it when "5" is written to
    /proc/self/clear_refs, so nothing runs beside the timed loop. Elsewhere a thread samples
    RSS; it wakes every `interval_s`, which on a 2-core machine takes a core from the runs
    being timed, so the interval is kept coarse.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s, self.peak, self.start, self._stop = interval_s, 0, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reset_kernel_peak() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return kernel_peak_rss() is not None
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        release_freed_memory()  # so that `start` is what is really in use
        self.start = self._proc.memory_info().rss
        if not self._reset_kernel_peak():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._proc.memory_info().rss)
        else:
            self.peak = kernel_peak_rss() or self._proc.memory_info().rss

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def added_mb(self) -> float:
        return max(0, self.peak - self.start) / 2**20


def kernel_peak_rss() -> int | None:
    """VmHWM from /proc/self/status in bytes, or None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


def timing_settings(cfg: BenchConfig, profile_prefix: str | None = None) -> TimingSettings:
    return TimingSettings(cfg.seed, cfg.include_copies, cfg.cuda_graph, profile_prefix)


def open_timed(path: Path, provider: str, batch: int, threads: int | None, cfg: BenchConfig,
               profile_prefix: str | None = None) -> TimedModel:  # fmt: skip
    """The model of one cell, ready to time; a provider that is missing or falls back marks the cell skipped."""
    prov = get_provider(provider)
    try:
        return backend_for(prov).open_timed(path, prov, batch, threads, timing_settings(cfg, profile_prefix))
    except sessions.ProviderUnavailable as err:
        raise RuntimeError(f"{err}; skipped") from None


def measure(path: Path, provider: str, batch: int, threads: int | None, cfg: BenchConfig) -> Result:
    """One cell of the grid. Errors are returned in the result, never raised."""
    result = Result(model=path.name, provider=provider, batch=batch, threads=threads)
    try:
        prov = get_provider(provider)
        result.file_bytes = path.stat().st_size
        # Refuses corrupt files and external data outside the model's folder before ORT reads them.
        stats = weight_stats(load_checked(path))
        result.parameters, result.int8_share = stats["parameters"], stats["int8_share"]
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            timed = open_timed(path, provider, batch, threads, cfg)
            result.session_create_s = time.perf_counter() - t0
            result.time_runner(timed.run, cfg)
            if prov.on_gpu:
                result.peak_device_mb = device_memory_mb()
        result.peak_rss_mb, result.model_rss_mb = rss.peak_mb, rss.added_mb
        del timed
        ep = prov.execution_provider
        # ONNX Runtime's profile says which nodes ran on the CPU: asked for on a GPU provider it may
        # place some there without a word.
        if ep and (prov.on_gpu or cfg.profile_dir):
            # A separate short session: profiling slows the runs it records.
            profile = profile_cell(path, provider, batch, threads, cfg)
            result.nodes_on_cpu = len(profile.cpu_nodes)
            result.note = profile.fallback_note(ep)
            if cfg.profile_dir:
                result.extra["profile"] = profile.as_dict()
    except Exception as e:  # per-model report: the other models are still measured
        result.fail(e)
    return result


def profile_cell(path: Path, provider: str, batch: int, threads: int | None, cfg: BenchConfig) -> OpProfile:
    """ORT's profiler over `profile_runs` runs after warm-up (placement only: 3 runs)."""
    runs = cfg.profile_runs if cfg.profile_dir else 3
    folder = Path(cfg.profile_dir or tempfile.mkdtemp(prefix="vitdeploy-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / (f"{path.stem}_{provider}_b{batch}" + (f"_t{threads}" if threads else ""))
    timed = open_timed(path, provider, batch, threads, cfg, profile_prefix=str(prefix))
    warmup = min(cfg.warmup, 5) + 1
    for _ in range(warmup + runs):
        timed.run()
    trace = Path(timed.handle.end_profiling())
    profile = read_trace(trace, skip_runs=warmup)
    if not cfg.profile_dir:
        trace.unlink(missing_ok=True)
        folder.rmdir()
    return profile


def device_memory_mb() -> float | None:
    """GPU memory this process holds (nvidia-smi). ORT's CUDA arena does not hand memory back,
    so what it holds after the timed runs is its peak."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    mine = [float(used) for pid, used in (line.split(",") for line in out.splitlines() if "," in line) if int(pid) == os.getpid()]
    return sum(mine) if mine else None


def baseline_for(name: str, names: list[str], explicit: str | None) -> str:
    """`--baseline` if given; else the FP32 model of the same name (x.fp32.onnx); else the first."""
    if explicit:
        match = [n for n in names if explicit in (n, Path(n).stem) or Path(explicit).name == n]
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
            r.extra["speedup"] = paired_speedup(r, base) or r.throughput / base.throughput
            if r.file_bytes and base.file_bytes:  # a PyTorch reference has no file
                r.extra["size_ratio"] = r.file_bytes / base.file_bytes


def int8_no_faster(results: list[Result]) -> list[str]:
    """A warning for each INT8 model that ran no faster than its FP32 baseline in a cell.

    Whether INT8 pays depends on the CPU (VNNI or not) and on the shared machine's phase: the
    reference teacher's static INT8 measured 1.25x FP32 at batch 1 on one machine and 0.96x on
    another. Shipping it there would make the device slower and less accurate."""
    warnings = []
    float_models = {r.model for r in results if r.int8_share == 0 and not r.error}
    for r in results:
        speedup, base = r.extra.get("speedup"), r.extra.get("baseline")
        if r.error or speedup is None or base not in float_models or r.int8_share <= 0 or speedup > 1.0:
            continue
        warnings.append(
            f"{r.model} (INT8) runs no faster than {base} on {r.provider} at batch {r.batch} ({speedup:.2f}x): "
            "here the FP32 file is the better choice; `vitdeploy tune` times the alternatives"
        )
    return warnings


def cell_name(r: Result) -> str:
    """One cell of the grid, by name: model, provider, batch and threads."""
    return f"{r.model} {r.provider} b{r.batch} t{r.threads or 'default'}"


def paired_speedup(result: Result, base: Result) -> float | None:
    """Median over rounds of this round's throughput / the baseline's in the same round.

    Cells of one round run back to back, so a machine that drifts over minutes (a shared VM)
    slows both sides of each pair alike; the ratio of overall medians would not cancel that.
    """
    if result.extra.get("bracket_ratios") and result.extra.get("bracket_baseline") == cell_name(base):
        # measured right after its baseline, every round (run_grid's `baselines`)
        return statistics.median(result.extra["bracket_ratios"])
    pairs = [
        a / b for a, b in zip(result.extra.get("round_series", []), base.extra.get("round_series", []), strict=False) if a and b
    ]
    return statistics.median(pairs) if len(pairs) > 1 else None


def environment(cfg: BenchConfig) -> dict:
    known = [PROVIDERS[p] for p in cfg.providers if p in PROVIDERS]
    return machine_record(known) | {
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_mode": "sequential",
        "inter_op_threads": 1,
        "cpu_mem_arena": True,
        "throughput": "batch / median latency" + (f"; median of {cfg.rounds} round-robin rounds" if cfg.rounds > 1 else ""),
        "provider_options": {
            p.name: backend_for(p).provider_options(p, timing_settings(cfg)) for p in known if p.execution_provider
        },
        "gpu": gpu_name(),
        "config": asdict(cfg) | {"profile_dir": str(cfg.profile_dir) if cfg.profile_dir else None},
    }


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def write_csv(path: Path, results: list[Result]) -> None:
    rows = [r.as_row() for r in results]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


Cell = tuple[str, Callable[[BenchConfig], Result]]  # (progress label, measures one round)


def baseline_cells(paths: list[Path], baseline: Path, cfg: BenchConfig) -> dict[int, int]:
    """For `onnx_cells(paths, cfg)`: each cell's index -> the index of `baseline`'s cell with the same
    provider, batch and threads."""
    block = len(cfg.providers) * len(cfg.batches) * len(cfg.threads)
    b = paths.index(baseline)
    return {i: b * block + i % block for i in range(len(paths) * block)}


def onnx_cells(paths: list[Path], cfg: BenchConfig) -> list[Cell]:
    def cell(path: Path, provider: str, batch: int, threads: int | None) -> Cell:
        label = f"{path.name} {provider} b{batch}" + (f" t{threads}" if threads else "")
        return label, lambda c: measure(path, provider, batch, threads, c)

    return [cell(p, prov, b, t) for p in paths for prov in cfg.providers for b in cfg.batches for t in cfg.threads]


def run_grid(cells: list[Cell], cfg: BenchConfig, bar: Progress, baselines: dict[int, int] | None = None) -> list[Result]:
    """Every cell `cfg.rounds` times, round-robin; each cell keeps its median round.

    Cells are ONNX models (`onnx_cells`) or anything else measured the same way (the PyTorch
    reference), so that all of them share the rounds and their speedups pair up.

    `baselines` maps a cell's index to its baseline cell's. Each such cell is then measured
    right after a fresh measurement of its baseline, and keeps the ratio of every pair
    (`bracket_ratios`): a shared machine can change speed by 1.5x within seconds, and only
    back-to-back pairs see the same machine.
    """
    baselines = {i: b for i, b in (baselines or {}).items() if i != b}
    bracketing = set(baselines.values())  # measured before each of their cells, not on their own
    per_round = len(cells) - len(bracketing) + 2 * len(baselines)
    task = bar.add_task("benchmarking", total=per_round * cfg.rounds)
    rounds: list[list[Result]] = [[] for _ in cells]
    for r in range(cfg.rounds):
        # Profiles and placement do not change between rounds: record them once.
        round_cfg = cfg if r == 0 else BenchConfig(**{**asdict(cfg), "profile_dir": None})
        for i, (label, measure_round) in enumerate(cells):
            if i in bracketing:
                continue
            bar.update(task, info=label + (f" round {r + 1}/{cfg.rounds}" if cfg.rounds > 1 else ""))
            if i in baselines:
                base = cells[baselines[i]][1](round_cfg)
                rounds[baselines[i]].append(base)
                bar.advance(task)
            result = measure_round(round_cfg)
            rounds[i].append(result)
            if i in baselines and not (result.error or base.error) and base.throughput:
                result.extra["bracket_ratio"] = result.throughput / base.throughput
                result.extra["bracket_baseline"] = cell_name(base)
            bar.advance(task)
    return [median_round(cell_rounds) for cell_rounds in rounds]


def median_round(results: list[Result]) -> Result:
    """The round with the median throughput, carrying the spread of all rounds."""
    ok = [r for r in results if not r.error]
    if not ok:
        return results[0]
    ordered = sorted(ok, key=lambda r: r.throughput)
    chosen = ordered[(len(ordered) - 1) // 2]
    first = results[0]
    for attr in ("nodes_on_cpu", "note"):  # measured in the first round only
        setattr(chosen, attr, getattr(first, attr))
    if "profile" in first.extra:
        chosen.extra["profile"] = first.extra["profile"]
    failed = [r.error for r in results if r.error]
    if failed:
        chosen.note = f"{len(failed)} of {len(results)} rounds failed: {failed[0]}"[:300]
    ratios = [r.extra["bracket_ratio"] for r in results if "bracket_ratio" in r.extra]
    if ratios:
        chosen.extra["bracket_ratios"] = [round(v, 4) for v in ratios]
    chosen.extra.pop("bracket_ratio", None)
    if len(ok) > 1:
        speeds = [r.throughput for r in ordered]
        chosen.round_spread = (speeds[-1] - speeds[0]) / statistics.median(speeds)
        chosen.extra["round_throughputs"] = [round(v, 2) for v in speeds]
        chosen.extra["round_series"] = [None if r.error else r.throughput for r in results]  # in round order
    return chosen


def add_accuracy(results: list[Result], paths: list[Path], data: str, bar: Progress) -> None:
    """Top-1 of each model (CPU provider) on real images, with the preprocessing it carries."""
    from vitdeploy.core.batching import evaluation_batch
    from vitdeploy.data.datasets import DataStore, decode_imagefolder
    from vitdeploy.data.scoring import top1
    from vitdeploy.runtime.sessions import open_predictor

    if ":" in data or not Path(data).exists():
        name, _, split = data.partition(":")
        images = DataStore().load(name, split or "test")
    else:
        folder = Path(data)
        images = decode_imagefolder(folder.parent, {folder.name})[folder.name]
    # ONNX Runtime's providers compute the same function: scored once, on the CPU. OpenVINO
    # runs its own kernels and fusions, at its own precision: each of its providers is scored.
    scorers = sorted({get_provider(r.provider).scored_on for r in results}, key=lambda p: p.name)
    for path in paths:
        read = None  # the model's preprocessing and token count, read once for all its scorers
        for scorer in scorers:
            rows = [r for r in results if r.model == path.name and get_provider(r.provider).scored_on == scorer]
            if not rows or all(r.error for r in rows):
                continue
            try:
                if read is None:
                    graph = onnx.load(str(path), load_external_data=False)
                    read = (*read_preprocess(graph), evaluation_batch(token_count(graph)))
                pre, size, batch = read
                predict = open_predictor(path, scorer.name)
                task = bar.add_task(f"top-1 {path.name} ({scorer.name})", total=len(images))
                acc: float | None = top1(predict, images, pre, size, batch, lambda n, t=task: bar.advance(t, n))
            except Exception as e:
                acc = None
                for r in rows:
                    r.note = f"top-1 failed: {e}"[:200]
            for r in rows:
                r.top1 = acc
