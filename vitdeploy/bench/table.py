"""`vitdeploy bench`'s tables: the results grouped by provider, batch and threads, and
where one cell's time goes (per-op profiles). Rendering only; the numbers come from `bench`."""

from __future__ import annotations

from rich.table import Table

from vitdeploy.bench.measure import Result

COLUMN_NOTES = {
    "img/s": "batch / median latency",
    "p50 ms": "median latency of one run",
    "p99 ms": "99th percentile",
    "runs": "timed runs",
    "MB": "file size",
    "int8 %": "share of weights stored as INT8",
    "mem MB": "resident memory the cell added (session, weights, arena, runs; PyTorch: model and runs)",
    "speedup": "throughput against the baseline, paired round by round",
    "size": "file size against the baseline",
    "spread": "(max - min) / median of the rounds",
}


def result_row(r: Result) -> dict[str, str]:
    speed, size = r.extra.get("speedup"), r.extra.get("size_ratio")
    return {
        "model": r.model, "provider": r.provider, "batch": str(r.batch), "threads": str(r.threads or "default"),
        "img/s": f"{r.throughput:,.0f}", "p50 ms": f"{r.latency_p50_ms:.2f}", "p99 ms": f"{r.latency_p99_ms:.2f}",
        "runs": str(r.runs), "MB": f"{r.file_bytes / 1e6:.2f}", "int8 %": f"{100 * r.int8_share:.0f}",
        "mem MB": f"{r.model_rss_mb:.0f}", "top-1": "" if r.top1 is None else f"{r.top1:.2%}",
        "speedup": "" if speed is None else f"{speed:.2f}x", "size": "" if size is None else f"{size:.2f}x",
        "spread": "" if r.round_spread is None else f"{r.round_spread:.1%}",
        "note": "CPU fallback" if r.falls_back else "",
    }  # fmt: skip


GROUP_COLUMNS = ("provider", "batch", "threads")  # a title row per group, not a column
# Left out, in this order, while the table is wider than the terminal (--json/--csv keep all).
NARROWING = ("runs", "p99 ms", "mem MB", "int8 %", "MB", "size", "p50 ms")


def results_table(results: list[Result], width: int | None = None) -> Table:
    """Rows grouped by provider, batch and threads, fastest first; columns empty in every row
    left out, and at a terminal's `width` the least telling ones (`NARROWING`) as well."""
    ordered = sorted((r for r in results if not r.error), key=lambda r: (r.provider, r.batch, r.threads or 0, -r.throughput))
    rows = [result_row(r) for r in ordered]
    columns = [c for c in rows[0] if c not in GROUP_COLUMNS and any(row[c] for row in rows)] if rows else ["model"]
    table = grouped_table(ordered, rows, columns, [])
    for name in NARROWING:
        if width is None or natural_width(table) <= width:
            break
        if name in columns:
            columns.remove(name)
            table = grouped_table(ordered, rows, columns, [c for c in NARROWING if c not in columns and c in rows[0]])
    return table


def grouped_table(ordered: list[Result], rows: list[dict[str, str]], columns: list[str], left_out: list[str]) -> Table:
    notes = "; ".join(f"{c}: {COLUMN_NOTES[c]}" for c in columns if c in COLUMN_NOTES)
    caption = f"fastest first within each provider, batch and threads. {notes}"
    if left_out:
        caption += f". Left out to fit the terminal: {', '.join(left_out)} (all in --json/--csv)"
    table = Table(title="vitdeploy bench", caption=caption)
    for c in columns:
        table.add_column(c, justify="left" if c in ("model", "note") else "right")
    previous = None
    for r, row in zip(ordered, rows, strict=True):
        group = (r.provider, r.batch, r.threads)
        if group != previous:
            if previous is not None:
                table.add_section()
            threads = f"{r.threads} threads" if r.threads else "default threads"
            table.add_row(f"[bold]{r.provider} · batch {r.batch} · {threads}[/]", *[""] * (len(columns) - 1))
            previous = group
        table.add_row(*(row[c] for c in columns))
    return table


def natural_width(table: Table) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def profile_table(result: Result, top: int = 12) -> Table:
    """Where one cell's time goes, by op type (ORT's profiler, kernel time only)."""
    prof = result.extra["profile"]
    title = f"{result.model} {result.provider} b{result.batch}: {prof['kernel_ms_per_run']:.2f} ms kernel time per run"
    table = Table(title=title, caption=f"{prof['runs']} profiled runs; nodes by provider: {prof['nodes_by_provider']}")
    for c in ("op type", "nodes", "ms/run", "share", "provider"):
        table.add_column(c, justify="left" if c in ("op type", "provider") else "right")
    for op in prof["ops"][:top]:
        providers = ", ".join(p.removesuffix("ExecutionProvider") for p in op["providers"])
        table.add_row(op["op_type"], str(op["nodes"]), f"{op['ms_per_run']:.3f}", f"{op['share']:.1%}", providers)
    return table
