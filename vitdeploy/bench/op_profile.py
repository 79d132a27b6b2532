"""Per-operator profiles from ONNX Runtime's own profiler, and where each node ran. Torch-free.

ORT writes a Chrome-trace JSON with one `<node>_kernel_time` event per node and run, carrying
the op type and the execution provider that ran it. From it come two things bench needs:
where the time goes (by op type), and whether a "GPU" run really ran on the GPU: the CUDA
provider has no kernel for QLinear* ops or per-channel DequantizeLinear, so ORT places those
nodes on the CPU and the run is mostly a CPU run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CPU_PROVIDER = "CPUExecutionProvider"
# ORT keeps shape arithmetic on the CPU by design; a CPU share of kernel time above this
# means real compute fell back.
FALLBACK_TIME_SHARE = 0.05


@dataclass
class OpTime:
    op_type: str
    nodes: int
    ms_per_run: float
    share: float
    providers: tuple[str, ...]


@dataclass
class OpProfile:
    runs: int
    ms_per_run: float  # sum of kernel times; below wall time by the executor's own overhead
    ops: list[OpTime] = field(default_factory=list)
    nodes_by_provider: dict[str, int] = field(default_factory=dict)
    cpu_nodes: list[str] = field(default_factory=list)
    cpu_time_share: float = 0.0

    def falls_back(self, provider: str) -> bool:
        """True when a non-CPU provider left a material part of the work to the CPU."""
        return provider != CPU_PROVIDER and self.cpu_time_share > FALLBACK_TIME_SHARE

    def fallback_note(self, provider: str) -> str:
        if not self.falls_back(provider):
            return ""
        ops = sorted({op.op_type for op in self.ops if CPU_PROVIDER in op.providers and op.share > 0.01})
        return (
            f"CPU fallback: {len(self.cpu_nodes)} nodes ({', '.join(ops)}) ran on the CPU, "
            f"{self.cpu_time_share:.0%} of kernel time; not a GPU number"
        )

    def as_dict(self, top: int | None = None) -> dict:
        return {
            "runs": self.runs,
            "kernel_ms_per_run": self.ms_per_run,
            "nodes_by_provider": self.nodes_by_provider,
            "cpu_time_share": self.cpu_time_share,
            "ops": [op.__dict__ | {"providers": list(op.providers)} for op in self.ops[:top]],
        }


def summarize(events: list[dict], skip_runs: int = 0) -> OpProfile:
    """Aggregate a trace's node events by op type, leaving out the first `skip_runs` runs (warm-up)."""
    run_spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    if len(run_spans) <= skip_runs:
        raise ValueError(f"profile holds {len(run_spans)} runs; nothing left after {skip_runs} warm-up runs")
    start = run_spans[skip_runs][0]
    runs = len(run_spans) - skip_runs
    time_by_op: dict[str, float] = defaultdict(float)
    nodes_by_op: dict[str, set[str]] = defaultdict(set)
    providers_by_op: dict[str, set[str]] = defaultdict(set)
    provider_of: dict[str, str] = {}
    cpu_us = 0.0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < start:
            continue
        args = event.get("args", {})
        op, provider, node = args.get("op_name", "?"), args.get("provider", "?"), event["name"].removesuffix("_kernel_time")
        time_by_op[op] += event["dur"]
        nodes_by_op[op].add(node)
        providers_by_op[op].add(provider)
        provider_of[node] = provider
        if provider == CPU_PROVIDER:
            cpu_us += event["dur"]
    total_us = sum(time_by_op.values())
    ops = [
        OpTime(op, len(nodes_by_op[op]), us / runs / 1000, us / total_us if total_us else 0.0, tuple(sorted(providers_by_op[op])))
        for op, us in sorted(time_by_op.items(), key=lambda kv: -kv[1])
    ]
    by_provider: dict[str, int] = defaultdict(int)
    for provider in provider_of.values():
        by_provider[provider] += 1
    return OpProfile(
        runs=runs,
        ms_per_run=total_us / runs / 1000,
        ops=ops,
        nodes_by_provider=dict(by_provider),
        cpu_nodes=sorted(n for n, p in provider_of.items() if p == CPU_PROVIDER),
        cpu_time_share=cpu_us / total_us if total_us else 0.0,
    )


def read_trace(path: Path, skip_runs: int = 0) -> OpProfile:
    return summarize(json.loads(Path(path).read_text()), skip_runs)
