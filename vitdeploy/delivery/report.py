"""`vitdeploy report`: the survey's comparison table for your own recipes, measured on your machine.

For each recipe: reuse its artifact when the manifest's recipe hash matches (else build it),
time every artifact with bench's method (with `--no-build`, an earlier report.json in the output
folder that timed the same ONNX files supplies the timings instead) (paired round-robin rounds; CPU always, CUDA when
ONNX Runtime has it), and write `report.md`, a self-contained `report.html`, two PNG plots
(top-1 against CPU throughput and against size, the Pareto front drawn) and `report.json`.
Each row sits beside the survey's row for the same method, as deltas against each side's own
baseline. Nothing here imports torch: the caller builds what is missing (`Builder`).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitdeploy.bench import measure as B
from vitdeploy.core.contract import BuildManifest
from vitdeploy.core.errors import UserError
from vitdeploy.core.providers import get_provider
from vitdeploy.delivery.manifests import current_manifest
from vitdeploy.recipe.schema import Recipe, load_recipe

# The survey's CIFAR-10 table (ImageNet-pretrained ViT-B/16 baseline): top-1 %, size MB, CPU speedup.
SURVEY = json.loads(Path(__file__).with_name("survey.json").read_text())
PAPER_BASELINE_TOP1: float = SURVEY["baseline_top1"]


@dataclass(frozen=True)
class PaperRow:
    method: str
    top1: float | None
    size_mb: float | None = None
    cpu_speedup: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.top1 is None else self.top1 - PAPER_BASELINE_TOP1


PAPER = {key: PaperRow(**row) for key, row in SURVEY["rows"].items()}


def method_of(manifest: BuildManifest) -> tuple[str, str]:
    """(key into PAPER or '', a short description) from what the recipe did."""
    stages = manifest.stages
    kinds = [s.stage for s in stages]
    mode, distilled = manifest.quantize_mode, manifest.distilled
    if "nystrom" in kinds:
        m = next(s.config["landmarks"] for s in stages if s.stage == "nystrom")
        return f"nystrom_{m}", f"Nyström m = {m}"
    if "prune" in kinds:
        cfg = next(s.config for s in stages if s.stage == "prune")
        if cfg.get("ratio") is not None and not cfg.get("embed_ratio"):
            return f"prune_{cfg['ratio']}", f"pruning r = {cfg['ratio']}"
        if distilled:
            return "deit_tiny", "DeiT student, pruned from the teacher"
        return "", "pruning"
    if distilled and mode != "none":
        return "deit_quantized", f"DeiT (distillation token) + {mode} INT8"
    if distilled:
        return "", "DeiT (distillation token)"
    if mode == "dynamic":
        return "dynamic", "dynamic INT8"
    if mode == "static":
        return "", "static INT8"
    return "baseline", "FP32"


@dataclass
class Row:
    name: str
    manifest: BuildManifest
    onnx: Path
    method_key: str = ""
    method: str = ""
    speed: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # provider -> batch -> figures

    @property
    def top1(self) -> float:
        return self.manifest.artifact_top1

    @property
    def size_bytes(self) -> int:
        return self.manifest.sizes["onnx"]

    @property
    def paper(self) -> PaperRow | None:
        """The survey's row for this method, when the artifact was scored on the survey's dataset."""
        return PAPER.get(self.method_key) if self.manifest.dataset == SURVEY["dataset"] else None


def compares_with_survey(rows: list[Row]) -> bool:
    """The survey's columns only beside at least one compression method it measured."""
    return any(r.paper is not None and r.method_key != "baseline" for r in rows)


# Builds a recipe (given its file) and returns its manifest: the caller's, since building needs torch.
Builder = Callable[[Recipe, Path], dict]


def collect(recipe_paths: list[Path], build: Builder | None) -> tuple[list[Row], list[str]]:
    """A row per recipe whose artifact is current; `build` makes the missing ones (None: left out)."""
    rows, notes = [], []
    for path in recipe_paths:
        recipe = load_recipe(path)
        manifest = current_manifest(recipe)
        if manifest is None and build is not None:
            manifest = BuildManifest.from_dict(build(recipe, Path(path).resolve()), str(path))
        if manifest is None:
            notes.append(f"{recipe.artifact_name}: no current artifact (recipe changed or never built); left out")
            continue
        key, method = method_of(manifest)
        onnx = recipe.output.dir / manifest.file("onnx")
        rows.append(Row(recipe.artifact_name, manifest, onnx, key, method))
    if not rows:
        raise UserError("no artifact to report: build the recipes first, or leave out --no-build")
    return rows, notes


REPORT_PROVIDERS = ("cpu", "cuda")  # the report's columns, where each can run


def providers_present() -> tuple[str, ...]:
    from vitdeploy.runtime.backends import backend_for

    return tuple(p for p in REPORT_PROVIDERS if backend_for(p).missing_reason(get_provider(p)) is None)


def time_rows(rows: list[Row], cfg: B.BenchConfig, baseline: Row, bar) -> dict:
    paths = [r.onnx for r in rows]
    results = B.run_grid(B.onnx_cells(paths, cfg), cfg, bar, B.baseline_cells(paths, baseline.onnx, cfg))
    cell = {(r.model, r.provider, r.batch): r for r in results}
    for row in rows:
        for provider in cfg.providers:
            for batch in cfg.batches:
                r, base = cell.get((row.onnx.name, provider, batch)), cell.get((baseline.onnx.name, provider, batch))
                if r is None or r.error or base is None or base.error:
                    continue
                speedup = B.paired_speedup(r, base) or r.throughput / base.throughput
                figures = {"img_s": r.throughput, "vs_baseline": speedup, "p50_ms": r.latency_p50_ms, "spread": r.round_spread}
                row.speed.setdefault(provider, {})[batch] = figures
    return B.environment(cfg)


# ---------------------------------------------------------------- writing


def fmt_pt(v: float | None) -> str:
    return "" if v is None else f"{v:+.2f}"


def table_rows(rows: list[Row], baseline: Row, providers: tuple[str, ...], batches: tuple[int, ...]) -> list[list[str]]:
    base_top1, base_bytes = baseline.top1, baseline.size_bytes
    survey = compares_with_survey(rows)
    out = []
    for r in rows:
        delta = 100 * (r.top1 - base_top1)
        p = r.paper
        cells = [r.name, r.method, f"{100 * r.top1:.2f}", fmt_pt(delta)]
        if survey:
            cells += [
                "" if p is None or p.top1 is None else f"{p.top1:.2f}", "" if p is None else fmt_pt(p.delta),
                "" if p is None or p.delta is None or r is baseline else ("yes" if delta > p.delta else "no"),
            ]  # fmt: skip
        for provider in providers:
            for b in batches:
                s = r.speed.get(provider, {}).get(b)
                cells.append("" if s is None else f"{s['img_s']:,.0f} ({s['vs_baseline']:.2f}x)")
        m = r.manifest
        cells += [
            f"{r.size_bytes / 1e6:.2f}",
            f"{r.size_bytes / base_bytes:.0%}",
            f"{m.parameters / 1e6:.2f} M",
            f"{m.macs / 1e6:.0f} M",
        ]
        out.append(cells)
    return out


def headers(providers: tuple[str, ...], batches: tuple[int, ...], survey: bool) -> list[str]:
    speed = [f"{p.upper()} b{b} img/s" for p in providers for b in batches]
    paper = ["paper top-1 %", "paper Δ pt", "smaller drop"] if survey else []
    return ["artifact", "method", "top-1 %", "Δ pt", *paper, *speed, "size MB", "size vs base", "params", "MACs"]


def threads_text(threads: list[int | None]) -> str:
    return ", ".join("ONNX Runtime's default" if t is None else str(t) for t in threads)


def markdown(rows, baseline, env, providers, batches, notes) -> str:
    survey = compares_with_survey(rows)
    head = headers(providers, batches, survey)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in table_rows(rows, baseline, providers, batches)]
    isa = ", ".join(k for k, v in env.get("cpu_isa", {}).items() if v)
    intro = (
        f"# vitdeploy report\n\nBaseline: `{baseline.name}` ({100 * baseline.top1:.2f} % top-1). Δ: each artifact's top-1 minus "
        f"the baseline's, on {baseline.manifest.images:,} `{baseline.manifest.split}` images"
        + (f"; the paper's Δ is against its ViT-B baseline ({PAPER_BASELINE_TOP1} %)" if survey else "")
        + ". Throughput: batch / median latency, "
        f"{env['config']['rounds']} paired rounds; (×) is the speedup over the baseline paired round by round.\n\n"
        f"Measured on {env['cpu']} ({isa}; {env['logical_cores']} logical cores, "
        f"{threads_text(env['config']['threads'])} threads), ONNX Runtime {env['onnxruntime']}"
        + (f", GPU {env['gpu']}" if env.get("gpu") else "")
        + ".\n\n![top-1 against CPU throughput](accuracy_vs_throughput.png) ![top-1 against size](accuracy_vs_size.png)\n\n"
    )
    return intro + "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in notes) + "\n"


def pareto(points: list[tuple[float, float]], larger_x_is_better: bool) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (y: higher is better), sorted by x."""
    sign = 1 if larger_x_is_better else -1
    front = [p for p in points if not any(sign * q[0] >= sign * p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def plot(rows: list[Row], out: Path, provider_batch: tuple[str, int]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'vitdeploy[report]'") from None
    provider, batch = provider_batch
    figures = []
    specs = [
        ("accuracy_vs_throughput.png", f"{provider.upper()} throughput at batch {batch} (img/s)", True,
         lambda r: r.speed.get(provider, {}).get(batch, {}).get("img_s")),
        ("accuracy_vs_size.png", "ONNX file size (MB)", False, lambda r: r.size_bytes / 1e6),
    ]  # fmt: skip
    for filename, xlabel, larger_better, xvalue in specs:
        points = [(xvalue(r), 100 * r.top1, r.name) for r in rows if xvalue(r) is not None]
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#1f77b4", zorder=3)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto([(p[0], p[1]) for p in points], larger_better)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="#d62728", linestyle="--", label="Pareto front", zorder=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        figures.append(out / filename)
    return figures


def html_page(md_rows: list[list[str]], head: list[str], intro_md: str, images: list[Path]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in md_rows)
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    pictures = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in intro_md.split("\n\n")[1:3])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>vitdeploy report</title><style>'
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+2),th{text-align:left}"
        "img{max-width:48%;margin:1em 1% 0 0}</style></head><body><h1>vitdeploy report</h1>"
        f"{paragraphs}<table><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>{pictures}</body></html>\n"
    )


def write(rows: list[Row], baseline: Row, env: dict, out: Path, providers, batches, notes) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    images = plot(rows, out, (providers[0], batches[-1]))
    md = markdown(rows, baseline, env, providers, batches, notes)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(
        html_page(
            table_rows(rows, baseline, providers, batches), headers(providers, batches, compares_with_survey(rows)), md, images
        )
    )
    data = {
        "baseline": baseline.name,
        "paper_baseline_top1": PAPER_BASELINE_TOP1,
        "environment": env,
        "notes": notes,
        "rows": [
            {
                "name": r.name, "method": r.method, "top1": r.top1, "delta_pt": 100 * (r.top1 - baseline.top1),
                "paper": None if r.paper is None else r.paper.__dict__ | {"delta_pt": r.paper.delta},
                "speed": r.speed, "size_bytes": r.size_bytes, "parameters": r.manifest.parameters,
                "macs": r.manifest.macs, "manifest": r.manifest.raw,
            }
            for r in rows
        ],
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str))
    return {"md": out / "report.md", "html": out / "report.html", "json": out / "report.json", **{p.stem: p for p in images}}


def reuse_timings(out: Path, rows: list[Row]) -> dict | None:
    """The environment of an earlier report in `out` whose timings cover exactly these artifacts.

    Each row's speed figures are copied over when its ONNX file's sha256 is the one timed.
    """
    path = out / "report.json"
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    by_name = {r["name"]: r for r in earlier.get("rows", [])}
    for row in rows:
        old = by_name.get(row.name)
        if old is None or not old.get("speed"):
            return None
        timed = BuildManifest.from_dict(old["manifest"], str(path)).artifacts["onnx"].sha256
        if timed != row.manifest.artifacts["onnx"].sha256:
            return None
    for row in rows:
        row.speed = {p: {int(b): v for b, v in d.items()} for p, d in by_name[row.name]["speed"].items()}
    return earlier["environment"]


def run(
    recipe_paths: list[Path], out: Path, build: Builder | None, rounds: int, duration: float, threads: int | None,
    baseline_name: str | None,
) -> dict[str, Path]:  # fmt: skip
    rows, notes = collect(recipe_paths, build)
    baseline = next((r for r in rows if r.name == baseline_name), None) if baseline_name else rows[0]
    if baseline is None:
        raise UserError(f"--baseline {baseline_name}: not among {', '.join(r.name for r in rows)}")
    batches = (1, 16)
    env = None if build else reuse_timings(out, rows)
    if env is not None:
        providers = tuple(env["config"]["providers"])
        notes.append(f"timings reused from the earlier {out / 'report.json'} (the same ONNX files)")
    else:
        providers = providers_present()
        cfg = B.BenchConfig(providers=providers, batches=batches, threads=(threads,), rounds=rounds, duration_s=duration)
        from vitdeploy.core.progress import progress_bar

        with progress_bar(refresh_per_second=1) as bar:  # builds (above) show their own progress
            env = time_rows(rows, cfg, baseline, bar)
    return write(rows, baseline, env, out, providers, batches, notes)
