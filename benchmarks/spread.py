"""Run-to-run spread of `vitdeploy bench` results: python benchmarks/spread.py run1.json run2.json ...

For every (model, provider, batch, threads) cell: the reported throughput and speedup of each
run, and their spread, (max - min) / median.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text())["results"] for p in paths]
    cells: dict[tuple, list[dict]] = {}
    for results in runs:
        for r in results:
            if not r.get("error"):
                cells.setdefault((r["model"], r["provider"], r["batch"], r["threads"]), []).append(r)
    print(f"{'model':28s} {'batch':>5s}  {'img/s per run':28s} {'spread':>7s}  {'speedup per run':22s} {'spread':>7s}")
    for (model, _, batch, _), rs in cells.items():
        speeds, ups = [r["throughput"] for r in rs], [r.get("x_speedup") or 0.0 for r in rs]
        print(
            f"{model:28s} {batch:5d}  {[round(v) for v in speeds]!s:28s} {spread(speeds):7.1%}  "
            f"{[round(v, 2) for v in ups]!s:22s} {spread(ups) if all(ups) else 0:7.1%}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
