"""The `vitdeploy` command line. Thin: parse, call the library, print a table.

Over 500 lines on purpose: one function per command and its options, each thin; splitting it would
scatter typer's declarations, not logic.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vitdeploy.core.errors import BuildError, UserError
from vitdeploy.core.providers import choices_help, get_provider, provider_list
from vitdeploy.core.storage import STORAGE_ERRNOS, storage_error

# Plain click help: rich's boxed panels wrap option descriptions badly at 80 columns.
app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Compress, export, quantize and benchmark Vision Transformers for edge devices.",
)
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Fetch and cache datasets.")
app.add_typer(data_app, name="data")
out = Console(width=None if sys.stdout.isatty() else 200)  # tables stay whole in logs and pipes
err = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one red message and exit 2; failed build gates exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except BuildError as e:
            err.print(f"[bold red]build failed:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted; no partial artifact was written (a rerun continues where this stopped)")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a library's error: one line, the traceback only on request
            if os.environ.get("VITDEPLOY_DEBUG"):
                raise
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:  # a full or read-only disk: the user's to fix
                folder = Path(e.filename).parent if e.filename else Path.cwd()
                err.print(f"[bold red]error:[/] {storage_error(e, folder)}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(
                f"[bold red]error:[/] {type(e).__name__}: {first} (VITDEPLOY_DEBUG=1 shows the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(3) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from vitdeploy import __version__

        out.print(f"vitdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Compress, export, quantize and benchmark Vision Transformers for edge devices."""


def _validate(recipe_path: Path):
    """Schema, files, then the model name and op types: everything before any work starts.

    Names on the shipped lists pass without importing timm or ONNX Runtime's quantizer (a
    recipe checks in well under a second); any other name is asked of the installed library.
    """
    from vitdeploy.data.classes import check_head_matches, preprocessing_warning
    from vitdeploy.recipe.known_names import are_quantizable, is_known_vit
    from vitdeploy.recipe.schema import RecipeError, load_recipe

    recipe = load_recipe(recipe_path)
    try:
        if not is_known_vit(recipe.model.name):
            from vitdeploy.torch.models import validate_model_name

            validate_model_name(recipe.model.name)
        if recipe.quantize.mode != "none" and not are_quantizable(recipe.quantize.op_types):
            from vitdeploy.onnx.quantize import check_op_types

            check_op_types(recipe.quantize.op_types, recipe.quantize.mode)
        check_head_matches(recipe)
    except UserError as e:
        raise RecipeError(str(recipe_path), [str(e)]) from None
    warning = preprocessing_warning(recipe)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return recipe


@app.command()
@user_errors
def check(recipe: Annotated[Path, typer.Argument(help="recipe YAML")]) -> None:
    """Validate a recipe without running it."""
    r = _validate(recipe)
    table = Table(title=f"recipe {recipe}: valid", show_header=False)
    table.add_row("model", f"{r.model.name} {r.model.overrides.model_dump(exclude_none=True)}")
    table.add_row("weights", str(r.model.checkpoint or ("pretrained" if r.model.pretrained else "random init")))
    if r.model.reset_head:
        from vitdeploy.data.classes import with_head_for_data

        classes = with_head_for_data(r).model.overrides.num_classes
        table.add_row("head", f"new, {classes} classes (transfer: the classifier is re-initialised)")
    table.add_row("data", f"{r.data.dataset} ({r.data.source or 'cache'})")
    table.add_row("stages", ", ".join(s.stage for s in r.stages) or "none")
    q = r.quantize
    how = "by NNCF" if q.backend == "nncf" else q.format
    how += f", attention {q.attention}" if q.attention != "float" else ""
    table.add_row("quantize", q.mode if q.mode == "none" else f"{q.mode} {how}")
    table.add_row("output", str(r.output.dir / f"{r.artifact_name}.onnx"))
    out.print(table)


@app.command(short_help="Build a recipe into ONNX artifacts and a manifest.")
@user_errors
def build(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML")],
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore saved stages and training state; start over")] = False,
    checkpoint_every: Annotated[
        float, typer.Option(min=0, help="seconds between training checkpoints within an epoch (also at every epoch end)")
    ] = 300.0,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="if the recipe is being built now, stop (exit 2)")] = False,
) -> None:
    """Build a recipe: stages, ONNX export, optimize, quantize, evaluate, manifest.

    An interrupted build (Ctrl-C, kill) resumes where it stopped when run again. A second
    build of the same recipe waits for the first one.
    """
    r = _validate(recipe)
    from vitdeploy.pipeline.build import build as run_build
    from vitdeploy.torch.stages import resolve_device

    with interrupt_on_sigterm():
        manifest = run_build(
            r, recipe.resolve(), resolve_device(device), fresh=fresh, checkpoint_every_s=checkpoint_every, wait=not no_wait
        )
    from vitdeploy.core.contract import BuildManifest

    typed = BuildManifest.from_dict(manifest, r.artifact_name)
    out.print(summary_table(typed))
    out.print(next_steps_after_build(r, typed), highlight=False)


def next_steps_after_build(r, manifest) -> str:
    """Where the files went, and the two commands a user runs next."""
    folder = r.output.dir
    onnx_file = folder / manifest.file("onnx")
    return (
        f"files in {folder}/ (manifest {r.artifact_name}.json); next: "
        f"vitdeploy bench {onnx_file} --batch 1,16, then vitdeploy package {onnx_file} --out {folder / r.artifact_name}.tar.gz"
    )


@app.command(short_help="Find the fastest artifact within an accuracy budget, measured here.")
@user_errors
def tune(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML: its model, data and stages; the search varies quantization")],
    max_drop: Annotated[float, typer.Option(min=0, help="top-1 points the artifact may lose against FP32")] = 0.5,
    provider: Annotated[str, typer.Option(help=f"comma list of {choices_help()}: where speed is measured")] = "cpu",
    batch: Annotated[str, typer.Option(help="comma list of batch sizes to be fast at")] = "1,16",
    threads: Annotated[int | None, typer.Option(min=1, help="intra-op threads (default: ONNX Runtime's)")] = None,
    minutes: Annotated[float | None, typer.Option(min=0, help="build no new candidate after this many minutes")] = None,
    holdout: Annotated[int, typer.Option(min=1, help="training images set aside to score candidates")] = 1000,
    validation: Annotated[
        str | None,
        typer.Option(help="score candidates on this split of the dataset's own (its val/) instead of held-out training images"),
    ] = None,
    holdout_from: Annotated[
        str | None,
        typer.Option(
            help="take the --holdout images from this split instead (test: for a model trained on every "
            "training image; the test top-1 is then on the rest of the test split)"
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="paired rounds per timed cell")] = 3,
    duration: Annotated[float, typer.Option(min=0.1, help="seconds of timed runs per cell and round")] = 1.0,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="time again what an earlier tune timed")] = False,
    students: Annotated[
        str, typer.Option("--candidates", help="comma list of recipes of structured students (pruned, distilled) to search too")
    ] = "",
    device: Annotated[str, typer.Option(help="device for builds: cpu, cuda, cuda:N or auto")] = "auto",
    runoff_seconds: Annotated[
        float | None,
        typer.Option(min=0, help="time cap of the run-off between the leaders (default: a fifth of the search, 20 s to 10 min)"),
    ] = None,
) -> None:
    """Build quantization candidates of a recipe (and of the students given with --candidates),
    score them on held-out training images, time them against FP32 on this machine, and write
    `<name>.tuned.yaml` for the fastest within the budget (FP32 itself when nothing is faster
    here); then build it and score it on the test split. A second tune of the recipe reuses the
    candidates built and timed by the first."""
    from vitdeploy.torch.stages import resolve_device
    from vitdeploy.tune.search import TuneSettings
    from vitdeploy.tune.search import tune as run_tune

    r = _validate(recipe)
    try:
        batches = tuple(int(b) for b in batch.split(","))
    except ValueError:
        raise UserError(f"--batch {batch!r}: expected a comma list of integers") from None
    if min(batches) < 1:
        raise UserError("--batch: sizes must be >= 1")
    student_paths = tuple(Path(p.strip()).resolve() for p in students.split(",") if p.strip())
    for path in student_paths:
        _validate(path)  # a broken student recipe is named before any work
    settings = TuneSettings(
        max_drop, provider_list(provider), batches, threads, minutes, holdout, rounds, duration, remeasure, student_paths,
        validation, holdout_from, runoff_seconds,
    )  # fmt: skip
    with interrupt_on_sigterm():
        report = run_tune(r, recipe.resolve(), settings, resolve_device(device))
    out.print(tune_table(report))


def tune_table(report: dict) -> Table:
    test = report["test"]
    scored = "test split" if report.get("validation_source") != test.get("split") else "rest of the test split"
    runoff = report.get("runoff")
    ran = f"; run-off {runoff['seconds']:.0f} s" + (" (time cap reached)" if runoff["capped"] else "") if runoff else ""
    table = Table(
        title=f"tune: {report['winner']} chosen ({report['validation_images']} validation images, "
        f"FP32 {report['fp32_validation_top1']:.2f} %){ran}; {scored}: {test['test_top1']:.2f} % "
        f"({-test['test_drop']:+.2f} points vs FP32 {test['test_top1_fp32']:.2f} %)",
        caption="drop: points lost against FP32 with its 95 % interval, paired image by image; "
        "run-off: speed against the leader, 99 % interval over paired rounds",
    )
    for col in ("candidate", "val top-1", "drop", "size", "speed vs FP32", "run-off", "verdict"):
        table.add_column(col, justify="left" if col in ("candidate", "verdict", "run-off") else "right")
    for c in report["candidates"]:
        speed = " ".join(f"b{s['batch']} {s['speedup']:.2f}x ({s['lowest']:.2f}-{s['highest']:.2f})" for s in c["speed"])
        top1 = f"{c['validation_top1']:.2f} %" if c["validation_top1"] is not None else "-"
        size = f"{c['bytes'] / 1e6:.2f} MB" if c["bytes"] else "-"
        verdict = c["verdict"] + (f" [yellow]borderline:[/] {c['borderline']}" if c.get("borderline") else "")
        table.add_row(c["name"], top1, drop_text(c), size, speed or "-", runoff_text(c.get("runoff")), verdict)
    return table


def drop_text(c: dict) -> str:
    if c["drop"] is None:
        return "-"
    interval = c.get("drop_interval")
    return f"{c['drop']:.2f} ({interval['lowest']:.2f} to {interval['highest']:.2f})" if interval else f"{c['drop']:.2f}"


def runoff_text(runoff: dict | None) -> str:
    if not runoff:
        return "-"
    speed = runoff.get("speed")
    if not speed:
        return runoff["outcome"]
    return f"{runoff['outcome']}: {speed['ratio']:.2f}x ({speed['lowest']:.2f}-{speed['highest']:.2f}) vs {runoff['versus']}"


@app.command(short_help="Which layers lose accuracy in INT8: each quantized alone.")
@user_errors
def sensitivity(
    model: Annotated[Path, typer.Argument(help="an FP32 ONNX file (a build's <name>.fp32.onnx or <name>.onnx)")],
    data: Annotated[str, typer.Option(help="a cached split: images to calibrate on and to score")] = "cifar10:train",
    images: Annotated[int, typer.Option(min=1, help="images scored per layer")] = 500,
    calibration: Annotated[int, typer.Option(min=1, help="calibration images (others than those scored)")] = 256,
    method: Annotated[str, typer.Option(help="calibration: minmax, entropy or percentile")] = "minmax",
    top: Annotated[int, typer.Option(min=1, help="rows shown")] = 15,
    json_out: Annotated[Path | None, typer.Option("--json", help="write every layer as JSON")] = None,
) -> None:
    """Quantize each layer group static INT8 alone (calibrated once; a group: the layers reading
    one input, q/k/v say) and score it against the FP32 file:
    top-1 drop, mean logit error, top-1 agreement. Keep the worst in float with
    `quantize.exclude_nodes`. No PyTorch needed."""
    import onnx

    from vitdeploy.core.batching import calibration_batch
    from vitdeploy.core.progress import progress_bar
    from vitdeploy.data.datasets import DataStore, PreprocessedImages
    from vitdeploy.onnx.graph import read_preprocess, token_count
    from vitdeploy.onnx.quantize import ArrayCalibrationReader
    from vitdeploy.onnx.sensitivity import layer_sensitivity, quantizable_groups
    from vitdeploy.recipe.schema import QuantizeSpec

    if not model.is_file():
        raise UserError(f"no such model file: {model}")
    if method not in ("minmax", "entropy", "percentile"):
        raise UserError(f"--method {method!r}: expected minmax, entropy or percentile")
    graph = onnx.load(str(model), load_external_data=False)
    pre, size = read_preprocess(graph)
    spec = QuantizeSpec(mode="static", calibration={"method": method, "samples": calibration})
    groups, input_name, tokens = quantizable_groups(graph, spec), graph.graph.input[0].name, token_count(graph)
    if not groups:
        raise UserError(f"{model.name}: no layer static INT8 would quantize (is it already quantized?)")
    del graph
    name, _, split = data.partition(":")
    rest, scored = DataStore().load(name, split or "train").hold_out(images, seed=7)
    cal = rest.subset(calibration, seed=2)
    reader = ArrayCalibrationReader(input_name, PreprocessedImages(cal.images, pre, size), calibration_batch(tokens))
    with progress_bar(refresh_per_second=1) as bar:
        task = bar.add_task("quantizing one layer group at a time", total=len(groups))
        found = layer_sensitivity(model, spec, reader, scored, pre, size, advance=lambda node: bar.advance(task))
    table = Table(
        title=f"{model.name}: each of {len(found)} layer groups (layers reading one input) static INT8 alone, "
        f"{len(scored)} images of {data}"
    )
    for col in ("layers", "op", "top-1 drop", "mean |logit error|", "top-1 agreement"):
        table.add_column(col, justify="left" if col in ("layers", "op") else "right")
    for s in found[:top]:
        table.add_row(s.group, s.op_type, f"{s.top1_drop:+.2f}", f"{s.logit_error:.4f}", f"{s.agreement:.2%}")
    out.print(table)
    if json_out:
        from vitdeploy.core.storage import write_json_atomic

        rows = [s.as_dict() for s in found]
        write_json_atomic(json_out, {"model": str(model), "data": data, "images": len(scored), "layers": rows})


@app.command(short_help="Remove recipes' caches (not their artifacts).")
@user_errors
def clean(
    recipes: Annotated[list[Path], typer.Argument(help="recipe YAML files whose cache to remove")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="if a recipe is being built now, stop (exit 2)")] = False,
) -> None:
    """Remove recipes' caches: saved stage outputs, training checkpoints, work files (not the artifacts).

    A recipe being built is cleaned when its build ends."""
    from vitdeploy.pipeline.build import clean as clean_cache

    for path in recipes:
        r = _validate(path)
        freed = clean_cache(r, wait=not no_wait)
        out.print(f"{r.artifact_name}: removed {freed / 1e6:.1f} MB of cache", highlight=False)


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (a service manager, `kill`) unwinds like Ctrl-C: temporary files are removed."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_table(m) -> Table:
    """A built manifest (BuildManifest) as the table `build` prints."""
    table = Table(title=f"{m.name}: built in {m.seconds:.0f} s")
    for col in ("artifact", "size", "top-1", "Δ vs fp32 onnx"):
        table.add_column(col, justify="right" if col != "artifact" else "left")
    ref = m.top1.get("onnx_fp32")
    rows = [("PyTorch", None, m.top1.get("torch")), ("ONNX FP32", m.artifacts.get("fp32_onnx", m.artifacts["onnx"]), ref)]
    if "onnx_int8" in m.top1:
        rows.append(("ONNX INT8", m.artifacts["onnx"], m.top1["onnx_int8"]))
    for label, rec, acc in rows:
        if acc is None:
            continue
        size = f"{rec.bytes / 1e6:.2f} MB" if rec and rec.bytes else ""
        delta = f"{100 * (acc - ref):+.2f} pt" if ref is not None else ""
        table.add_row(f"{label} {rec.file if rec else ''}", size, f"{acc:.2%}", delta)
    table.caption = f"{m.images} {m.split} images · parity top-1 {m.parity_agreement:.2%} · peak RSS {m.peak_rss_mb:.0f} MB"
    return table


def _expand(models: list[str]) -> list[Path]:
    """Shell-style globs work even when the shell did not expand them (quoted, or on Windows)."""
    import glob

    paths: list[Path] = []
    for m in models:
        hits = sorted(glob.glob(m)) if any(c in m for c in "*?[") else [m]
        paths.extend(Path(h) for h in hits)
    return [p for p in dict.fromkeys(paths) if not p.name.startswith(".")]


@app.command(short_help="Time and size ONNX models (no PyTorch needed).")
@user_errors
def bench(
    models: Annotated[list[str], typer.Argument(help="ONNX files or globs")],
    provider: Annotated[str, typer.Option(help=f"comma list of {choices_help()}")] = "cpu",
    batch: Annotated[str, typer.Option(help="comma list of batch sizes")] = "1",
    threads: Annotated[str, typer.Option(help="intra-op threads: N, a comma list, or 'sweep' (1, 2, all)")] = "",
    warmup: Annotated[int, typer.Option(min=0)] = 10,
    duration: Annotated[float | None, typer.Option(help="seconds of timed runs per cell")] = 5.0,
    iters: Annotated[int | None, typer.Option(min=1, help="exact timed runs per cell (overrides --duration)")] = None,
    min_iters: Annotated[int, typer.Option(min=1, help="at least this many timed runs")] = 100,
    data: Annotated[str | None, typer.Option(help="top-1 on a cached split (cifar10:test) or an ImageFolder split")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="measure each cell N times round-robin; report the median round")] = 1,
    include_copies: Annotated[bool, typer.Option(help="GPU: time host<->device copies too")] = False,
    cuda_graph: Annotated[bool, typer.Option(help="CUDA: capture and replay the run as a CUDA graph")] = False,
    profile: Annotated[
        Path | None, typer.Option(help="write ORT per-op profiles to this folder and print where the time goes")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="model to compare against; measured again right before each other model")
    ] = None,
    torch_recipe: Annotated[
        Path | None, typer.Option("--torch", help="also time this recipe's PyTorch model (eager) on the same grid")
    ] = None,
    torch_compile: Annotated[bool, typer.Option(help="with --torch: also time torch.compile")] = False,
    torch_amp: Annotated[bool, typer.Option(help="with --torch on cuda: also time float16 autocast")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="write results as CSV")] = None,
) -> None:
    """Measure throughput, latency, memory and size of ONNX models (no PyTorch needed)."""
    from vitdeploy.bench import measure as B
    from vitdeploy.bench.table import profile_table, results_table

    try:
        batches = tuple(int(b) for b in batch.split(","))
        thread_list = B.thread_sweep(threads)
    except ValueError:
        raise UserError(f"--batch {batch!r} / --threads {threads!r}: expected integers (or 'sweep')") from None
    if min(batches) < 1:
        raise UserError("--batch: sizes must be >= 1")
    paths = _expand(models)
    if not paths:
        raise UserError(f"no model matches {' '.join(models)}")
    cfg = B.BenchConfig(
        providers=provider_list(provider), batches=batches, threads=thread_list,
        warmup=warmup, duration_s=duration, iters=iters, min_iters=min_iters, rounds=rounds,
        include_copies=include_copies, cuda_graph=cuda_graph, profile_dir=profile,
    )  # fmt: skip
    # after the options (a wrong provider is named first), before anything is measured
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"no such model file: {', '.join(missing)}")
    base_path = next((p for p in paths if baseline in (p.name, p.stem, str(p))), None) if baseline else None
    if baseline and base_path is None:
        raise UserError(f"--baseline {baseline}: not one of the models benchmarked ({', '.join(p.name for p in paths)})")
    from vitdeploy.core.progress import progress_bar

    cells = B.onnx_cells(paths, cfg)
    brackets = B.baseline_cells(paths, base_path, cfg) if base_path else None
    if torch_recipe is not None:
        cells += _torch_cells(torch_recipe, cfg, torch_compile, torch_amp)
    # The bar redraws from its own thread; once a second keeps it off the cores being timed.
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(cells, cfg, bar, brackets)
        if data is not None:
            B.add_accuracy(results, paths, data, bar)
    B.add_ratios(results, base_path.name if base_path else None)  # results name models by file name
    out.print(results_table(results, width=out.width if out.is_terminal else None))
    if profile:
        for r in results:
            if "profile" in r.extra:
                out.print(profile_table(r))
    for r in results:
        if r.error:
            err.print(f"[red]{r.model}[/] ({r.provider}, batch {r.batch}): {r.error}", highlight=False)
    for warning in B.int8_no_faster(results):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    report = {"environment": B.environment(cfg), "results": [r.as_row() for r in results]}
    if json_out:
        from vitdeploy.core.storage import write_json_atomic

        write_json_atomic(json_out, report)
    if csv_out:
        B.write_csv(csv_out, results)
    if all(r.error for r in results):
        raise typer.Exit(1)


@app.command(short_help="Build, benchmark and tabulate recipes.")
@user_errors
def report(
    recipes: Annotated[list[Path], typer.Argument(help="recipe YAML files; the first is the baseline unless --baseline")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.md/.html/.json and the plots")] = Path("report"),
    no_build: Annotated[
        bool, typer.Option("--no-build", help="build nothing; reuse the timings of an earlier report in --out for the same files")
    ] = False,
    rounds: Annotated[int, typer.Option(min=1, help="paired round-robin rounds per cell")] = 5,
    duration: Annotated[float, typer.Option(help="seconds of timed runs per cell and round")] = 2.0,
    threads: Annotated[int | None, typer.Option(min=1, help="intra-op threads (default: ONNX Runtime's)")] = None,
    baseline: Annotated[str | None, typer.Option(help="artifact name every row is compared with")] = None,
    device: Annotated[str, typer.Option(help="device for builds: cpu, cuda, cuda:N or auto")] = "auto",
) -> None:
    """Build what is missing, benchmark every artifact, write the comparison table and plots."""
    from vitdeploy.delivery import report as R

    def build_missing(recipe, path: Path) -> dict:
        from vitdeploy.pipeline.build import build as run_build
        from vitdeploy.torch.stages import resolve_device

        return run_build(recipe, path, resolve_device(device))

    files = R.run(recipes, out_dir, None if no_build else build_missing, rounds, duration, threads, baseline)
    out.print(files["md"].read_text(), markup=False, highlight=False)
    out.print(f"[green]wrote[/] {', '.join(str(p) for p in files.values())}")


@app.command(short_help="Make a float16 variant for GPU providers.")
@user_errors
def convert(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX artifact")],
    fp16: Annotated[bool, typer.Option("--fp16", help="convert weights and activations to float16")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="default: <model>.fp16.onnx beside it")] = None,
    keep_fp32: Annotated[
        str | None, typer.Option(help="comma list of op types left in FP32 (default: LayerNorm family, Softmax)")
    ] = None,
) -> None:
    """Make a float16 variant of an FP32 artifact for GPU providers (I/O stays float32)."""
    from vitdeploy.onnx.fp16 import KEEP_FP32, convert_fp16

    if not fp16:
        raise UserError("say which conversion: --fp16 (the only one so far)")
    if not model.is_file():
        raise UserError(f"{model}: no such file")
    target = output or model.with_name(model.name.removesuffix(".onnx").removesuffix(".fp32") + ".fp16.onnx")
    keep = KEEP_FP32 if keep_fp32 is None else tuple(op.strip() for op in keep_fp32.split(",") if op.strip())
    try:
        report = convert_fp16(model, target, keep)
    except ValueError as e:
        raise UserError(str(e)) from None
    out.print(
        f"[green]{target}[/]: {report['bytes_before'] / 1e6:.2f} MB -> {report['bytes_after'] / 1e6:.2f} MB, "
        f"{report['casts_added']} casts added, kept FP32: {', '.join(report['kept_fp32']) or 'nothing'}"
    )


def _torch_cells(recipe: Path, cfg, compiled: bool, amp: bool) -> list:
    """The recipe's PyTorch model as bench cells (eager; compile and float16 autocast on request)."""
    from vitdeploy.torch.timing import load_reference, measure_torch

    label, model = load_reference(recipe)
    variants = [(False, False)] + [(True, False)] * compiled
    variants += [(c, True) for c, _ in variants] if amp else []
    cells = []
    for prov, b, t, (c, a) in itertools.product(cfg.providers, cfg.batches, cfg.threads, variants):
        if a and not get_provider(prov).on_gpu:
            continue  # AMP is a GPU measurement
        run = functools.partial(measure_torch, label, model, prov, b, t, compiled=c, amp=a)
        kind = ("compile" if c else "eager") + (" amp" if a else "")
        cells.append((f"{label} ({kind}) {prov} b{b}" + (f" t{t}" if t else ""), run))
    return cells


@app.command(short_help="Write a checksummed edge bundle of an artifact.")
@user_errors
def package(
    model: Annotated[Path, typer.Argument(help="a built artifact, e.g. artifacts/deit_int8.onnx")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="bundle folder, or FILE.tar.gz (default: <artifact>.bundle beside it)")
    ] = None,
    ort_format: Annotated[
        bool, typer.Option("--ort-format", help="add the ORT-format model and the operator config for reduced builds")
    ] = False,
    bench: Annotated[
        str, typer.Option(help=f"providers benchmarked into bundle.json (comma list of {choices_help()}); 'none' to skip")
    ] = "cpu",
    batch: Annotated[str, typer.Option(help="batch sizes benchmarked")] = "1,16",
    threads: Annotated[int | None, typer.Option(min=1, help="intra-op threads for the benchmark")] = None,
    duration: Annotated[float, typer.Option(help="seconds of timed runs per benchmark cell")] = 2.0,
) -> None:
    """Write an edge bundle: model, preprocess.json, labels.txt, bundle.json with checksums and figures."""
    from vitdeploy.delivery import packaging
    from vitdeploy.onnx.graph import load_checked
    from vitdeploy.runtime.bundle import open_bundle

    load_checked(model)
    packaging.built_artifact(model)  # before any benchmarking: refuse what is not an unchanged build output
    target = out_path or model.with_name(model.name.removesuffix(".onnx") + ".bundle")
    if bench != "none":  # a few seconds per cell: said, so the wait is not a surprise
        err.print(f"timing {model.name} on {bench} at batch {batch} for the bundle's figures (--bench none skips it)")
    figures, env = _bundle_benchmarks(model, bench, batch, threads, duration)
    with err.status(f"packaging {model.name}"):
        packaging.package(model, target, ort_format=ort_format, benchmarks=figures, bench_environment=env)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vitdeploy-bundle-") as scratch:
        verified = open_bundle(target, Path(scratch))
    files = ", ".join(verified.manifest["files"])
    out.print(f"[green]{target}[/]: {files} (checksums verified)", highlight=False)
    out.print(f"next: copy it to the device and run vitdeploy predict {target} IMAGES (no PyTorch needed)", highlight=False)


def _bundle_benchmarks(model: Path, providers: str, batch: str, threads: int | None, duration: float):
    if providers == "none":
        return [], None
    from vitdeploy.bench import measure as B
    from vitdeploy.core.progress import progress_bar

    try:
        batches = tuple(int(b) for b in batch.split(","))
    except ValueError:
        raise UserError(f"--batch {batch!r}: expected a comma list of integers") from None
    cfg = B.BenchConfig(providers=provider_list(providers), batches=batches, threads=(threads,),
                        duration_s=duration, min_iters=20)  # fmt: skip
    with progress_bar(refresh_per_second=1) as bar:
        results = B.run_grid(B.onnx_cells([model], cfg), cfg, bar)
    keep = ("provider", "batch", "threads", "throughput", "latency_p50_ms", "latency_p99_ms", "runs", "peak_rss_mb", "error")
    rows = [{k: v for k, v in r.as_row().items() if k in keep} for r in results]
    env = B.environment(cfg)
    return rows, {k: env[k] for k in ("cpu", "logical_cores", "cpu_isa", "onnxruntime", "openvino", "throughput")}


@app.command(short_help="Classify images with a bundle (no PyTorch).")
@user_errors
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder or .tar.gz (from vitdeploy package)")],
    images: Annotated[list[Path], typer.Argument(help="image files and folders (walked recursively)")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="labels shown per image")] = 3,
    batch: Annotated[int, typer.Option(min=1, help="images per inference call")] = 16,
    provider: Annotated[str, typer.Option(help=f"one of {choices_help()}")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="intra-op threads (default: the runtime's)")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="one JSON object per image (JSON Lines)")] = False,
    csv_rows: Annotated[bool, typer.Option("--csv", help="CSV with a header row")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write results here instead of stdout")] = None,
) -> None:
    """Classify images with a bundle (checksums verified first; needs no PyTorch)."""
    import tempfile

    from vitdeploy.core.progress import progress_bar
    from vitdeploy.runtime import bundle as B
    from vitdeploy.runtime import predict as P
    from vitdeploy.runtime.imaging import IMAGE_SUFFIXES
    from vitdeploy.runtime.results import result_writer

    if json_lines and csv_rows:
        raise UserError("choose one of --json and --csv")
    with tempfile.TemporaryDirectory(prefix="vitdeploy-bundle-") as scratch:
        opened = B.open_bundle(bundle, Path(scratch))
        run = P.bundle_predictor(opened, provider, threads)
        if get_provider(provider).is_reference:  # ONNX Runtime's x86 INT8 kernels
            from vitdeploy.core.cpu import cpu_isa

            risk = P.int8_saturation_risk(opened.manifest.get("quantization"), cpu_isa())
            if risk:
                err.print(f"[yellow]warning:[/] {risk}", highlight=False)
        tally = P.Tally()
        fmt = "json" if json_lines else "csv" if csv_rows else "text"
        with result_writer(output, fmt, top_k) as write, progress_bar(refresh_per_second=2) as bar:
            from vitdeploy.runtime.reader import image_paths

            # Counted first (a directory walk, no image read) so the bar shows progress and time left.
            task = bar.add_task("predicting", total=sum(1 for _ in image_paths(images)))
            for item in P.predict(opened, images, run, batch, top_k, on_batch=lambda n: bar.advance(task, n), tally=tally):
                write(item)
            if tally.images + tally.failed == 0:  # raised inside: no empty results file is left
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(map(str, images))}")
    _predict_summary(tally, batch, provider)
    if tally.failed:
        raise typer.Exit(1)


def _predict_summary(tally, batch: int, provider: str) -> None:
    rate = tally.images / tally.seconds if tally.seconds else 0.0
    line = f"{tally.images} images in {tally.seconds:.1f} s ({rate:,.0f} img/s, batch {batch}, {provider})"
    if tally.top1 is not None:
        line += f"; top-1 {tally.top1:.2%} on {tally.labelled} images labelled by their folder"
    err.print(line, highlight=False)
    for f in tally.failures[:20]:
        err.print(f"[red]skipped[/] {f.path}: {f.reason}", highlight=False)
    if tally.failed > 20:
        err.print(f"... and {tally.failed - 20} more unreadable images", highlight=False)


@data_app.command("get")
@user_errors
def data_get(
    name: Annotated[str, typer.Argument(help="'cifar10', or a name for an ImageFolder source")],
    from_: Annotated[Path | None, typer.Option("--from", help="local archive or folder to import")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="default: $VITDEPLOY_CACHE or ~/.cache/vitdeploy")] = None,
    size: Annotated[
        int | None, typer.Option(min=8, help="decode every image to SIZE x SIZE (shorter side, then centre crop)")
    ] = None,
) -> None:
    """Decode a dataset once into the cache (download CIFAR-10 when online).

    An ImageFolder source is <root>/<split>/<class>/<image> (train/ and test/, optionally val/),
    or <root>/<class>/<image>, split here: a fixed 20 % of each class becomes test."""
    from vitdeploy.data.datasets import DataStore

    store = DataStore(cache_dir)
    if from_ is not None:
        meta = store.import_source(name, from_, size=size)
    elif name == "cifar10":
        meta = store.download_cifar10()
    else:
        raise UserError(f"no download is known for '{name}'; import it with --from PATH")
    splits = ", ".join(f"{k}: {v}" for k, v in meta["splits"].items())
    out.print(f"[green]{name}[/] cached in {store.folder(name)} ({splits}; {len(meta['classes'])} classes)")


def main() -> None:
    app(prog_name="vitdeploy")


if __name__ == "__main__":
    sys.exit(main())
