"""Every time measurement tune makes: the screening of all candidates against FP32, and the
run-off's pairs against the leader; both as `bench --baseline` times, each file right after
the one it is compared with."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from vitdeploy.core.progress import console
from vitdeploy.tune.record import Speed, Tried
from vitdeploy.tune.runoff import PairedTimer

if TYPE_CHECKING:
    from vitdeploy.tune.search import TuneSettings


def measure_speeds(baseline: Tried, within: list[Tried], settings: TuneSettings, folder: Path, earlier: dict) -> None:
    """Time each built candidate right after the FP32 file (paired rounds)."""
    import datetime as dt

    from vitdeploy.bench import measure as B
    from vitdeploy.core.progress import progress_bar

    def key(t: Tried, provider: str, batch: int) -> tuple:
        return (t.sha256, provider, batch, settings.threads)

    todo = []
    for t in within:
        cached = [earlier.get(key(t, p, b)) for p in settings.providers for b in settings.batches]
        if settings.remeasure or None in cached:
            todo.append(t)
        else:
            t.speeds = [Speed(**s) for s in cached]
    if not todo:
        return
    paths = [Path(baseline.file)] + [Path(t.file) for t in todo]
    cfg = B.BenchConfig(
        providers=settings.providers, batches=settings.batches, threads=(settings.threads,), warmup=5,
        duration_s=settings.duration_s, min_iters=10, rounds=settings.rounds,
    )  # fmt: skip
    console.rule("[bold]tune: timing the candidates against FP32")
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(B.onnx_cells(paths, cfg), cfg, bar, B.baseline_cells(paths, paths[0], cfg))
    B.add_ratios(results, paths[0].name)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    by_file = {Path(t.file).name: t for t in todo}
    for r in results:
        t = by_file.get(r.model)
        if t is None:
            continue
        if r.error or "speedup" not in r.extra:
            t.error = t.error or f"timing failed on {r.provider} b{r.batch}: {r.error}"
            continue
        pairs = r.extra.get("bracket_ratios") or [r.extra["speedup"]]
        speedup = round(r.extra["speedup"], 4)
        t.speeds.append(Speed(r.provider, r.batch, speedup, min(pairs), max(pairs), round(r.throughput, 2), now))


def bench_timer(providers: tuple[str, ...], batches: tuple[int, ...], threads: int | None, duration_s: float) -> PairedTimer:
    """Paired rounds as `bench --baseline` times them: each file right after the leader, every cell."""
    from vitdeploy.bench import measure as B
    from vitdeploy.core.progress import progress_bar

    def time_pairs(leader: Path, files: list[Path], rounds: int) -> dict[Path, list[float]]:
        paths = [leader, *files]
        cfg = B.BenchConfig(providers=providers, batches=batches, threads=(threads,), warmup=5, duration_s=duration_s,
                            min_iters=10, rounds=rounds)  # fmt: skip
        with progress_bar(refresh_per_second=1) as bar:
            results = B.run_grid(B.onnx_cells(paths, cfg), cfg, bar, B.baseline_cells(paths, leader, cfg))
        cells: dict[str, list[list[float]]] = {}
        for r in results:
            if r.model != leader.name and r.extra.get("bracket_ratios") and not r.error:
                cells.setdefault(r.model, []).append(r.extra["bracket_ratios"])
        wanted = len(providers) * len(batches)
        out = {}
        for f in files:
            series = cells.get(f.name, [])
            if len(series) == wanted:  # a failed cell leaves no evidence for that round
                n = min(len(s) for s in series)
                out[f] = [math.exp(statistics.fmean(math.log(s[k]) for s in series)) for k in range(n)]
        return out

    return time_pairs


def read_earlier(path: Path) -> dict:
    """Timings of an earlier tune in this folder, by (file hash, provider, batch, threads)."""
    import json

    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}
    threads = old.get("settings", {}).get("threads")
    return {(c["sha256"], s["provider"], s["batch"], threads): s for c in old.get("candidates", []) for s in c.get("speed", [])}


def earlier_runoff(path: Path, settings: TuneSettings) -> dict | None:
    """The run-off record of an earlier tune in this folder, when it timed the same cells."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    cells = ("providers", "batches", "threads")
    same = all(old.get("settings", {}).get(k) == json.loads(json.dumps(asdict(settings)[k])) for k in cells)
    return old.get("runoff") if same else None
