"""Run-to-run spread of `vitdeploy bench` results: python benchmarks/spread.py run1.json run2.json ...

For every (model, provider, batch, threads) cell: the reported throughput and speedup of each
run and their spread, (max - min) / median; and, when the runs hold a PyTorch eager row, each
model's speed against it, paired round by round like bench's own speedups.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if all(values) else 0.0


def paired(a: list[float | None], b: list[float | None]) -> float | None:
    ratios = [x / y for x, y in zip(a, b, strict=False) if x and y]
    return statistics.median(ratios) if ratios else None


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text())["results"] for p in paths]
    cells: dict[tuple, list[dict]] = {}
    for results in runs:
        for r in results:
            if not r.get("error"):
                cells.setdefault((r["model"], r["provider"], r["batch"], r["threads"]), []).append(r)
    header = f"{'model':26s} {'batch':>5s}  {'img/s per run':20s} {'spread':>7s}  {'speedup per run':20s} {'spread':>7s}"
    print(header + "  vs PyTorch eager")
    for (model, provider, batch, threads), rs in cells.items():
        speeds, ups = [r["throughput"] for r in rs], [r.get("x_speedup") or 0.0 for r in rs]
        torch_rows = cells.get(("torch:" + rs[0]["x_baseline"].removesuffix(".onnx") + " (eager)", provider, batch, threads), [])
        pairs = zip(rs, torch_rows, strict=False)
        vs_torch = [paired(r.get("x_round_series", []), t.get("x_round_series", [])) for r, t in pairs]
        print(
            f"{model:26s} {batch:5d}  {[round(v) for v in speeds]!s:20s} {spread(speeds):7.1%}  "
            f"{[round(v, 2) for v in ups]!s:20s} {spread(ups):7.1%}  {[round(v, 2) for v in vs_torch if v]}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
