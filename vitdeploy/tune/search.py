"""Build every candidate, score it on held-out training images, time it against FP32, choose.

Accuracy is measured on a validation split set aside from the training images
(`data.holdout`): calibration and training never read it, and the test split is left for the
winner's own build. For a model trained on every training image, the validation images can be
set aside from the test split instead (`data.holdout_from`), and the winner is then scored on
the rest of it. Speed is measured, not modelled: each candidate is timed right after the
FP32 file, round after round (`bench --baseline`), and one that is not faster than FP32 in
every cell is never chosen; the leaders the screening cannot rank are then timed against each
other until one is shown fastest or a tie is called (`settle`, `runoff`). Built candidates and
their timings are kept in the tune folder, so a second tune of the same recipe (another budget,
say) only builds the winner.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from vitdeploy.core.batching import calibration_batch, evaluation_batch
from vitdeploy.core.contract import BuildManifest
from vitdeploy.core.errors import BuildError, UserError
from vitdeploy.core.progress import console
from vitdeploy.core.providers import REFERENCE, get_provider, recipe_targets, target_provider
from vitdeploy.core.storage import sha256_file, write_json_atomic
from vitdeploy.data.datasets import VALIDATION
from vitdeploy.recipe.schema import DataSpec, Recipe
from vitdeploy.tune.record import Tried
from vitdeploy.tune.settle import choose, mark_borderline, run_off_leaders, runoff_cap
from vitdeploy.tune.space import Candidate, candidates, student_candidates
from vitdeploy.tune.timing import earlier_runoff, measure_speeds, read_earlier


@dataclass(frozen=True)
class TuneSettings:
    max_drop: float  # top-1 points below the FP32 model, on the validation images
    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = (1, 16)
    threads: int | None = None
    minutes: float | None = None  # no new candidate is built after this; what was built is measured
    holdout: int = 1000
    rounds: int = 3
    duration_s: float = 1.0
    remeasure: bool = False  # time every candidate again, even those timed by an earlier tune
    students: tuple[Path, ...] = ()  # recipes of structured students (pruned, distilled) searched too
    validation_split: str | None = None  # a split of the dataset's own (val/) instead of held-out training images
    holdout_from: str | None = None  # the split held-out images come from, when not the train split
    runoff_s: float | None = None  # the run-off's time cap; None: a fifth of the search before it (20 s to 10 min)


@dataclass(frozen=True)
class Validation:
    """The images every candidate is scored on: training images set aside (the default), a split
    of the dataset's own (`split`), or images set aside from the test split (`source`). The last
    two are fair to students when the model tuned was trained on every training image (a student
    trained without the set-aside ones is not); with `source`, the test top-1 reported is on
    the rest of the test split."""

    images: int
    split: str | None = None
    source: str | None = None  # the split the held-out images come from; None: the train split

    def data(self, data: dict) -> dict:
        """A recipe's data section, scoring on these images."""
        if self.split is not None:
            return data | {"eval_split": self.split}
        return self.reported(data) | {"holdout": self.images, "eval_split": VALIDATION}

    def reported(self, data: dict, keep_holdout: bool = False) -> dict:
        """The tuned recipe's data section: its test split never holds a validation image, and
        with `keep_holdout` the validation images stay set aside (NNCF's accuracy control reads them)."""
        if self.source:
            return data | {"holdout": self.images, "holdout_from": self.source}
        return data | {"holdout": self.images} if keep_holdout else data

    @classmethod
    def of_report(cls, report: dict, recipe: Recipe) -> Validation:
        """The validation images a tune report was scored on."""
        source = report.get("validation_source")
        held_from_test = source not in (None, recipe.data.train_split)
        return cls(report["validation_images"], report.get("validation_split"), source if held_from_test else None)

    def describe(self) -> str:
        if self.split:
            return f"the {self.images} images of split {self.split}"
        return f"{self.images} images held out from the {self.source or 'train'} split"


def tune_folder(recipe: Recipe) -> Path:
    return recipe.output.dir / ".tune" / recipe.artifact_name


def scoring_provider(providers: tuple[str, ...]) -> str:
    """Where candidates are scored: OpenVINO computes its own way, so an OpenVINO target is
    scored there; ONNX Runtime's providers all compute the CPU's function."""
    return next((p for p in providers if get_provider(p).scored_alone), REFERENCE)


def scoring_runtime(providers: tuple[str, ...]) -> str:
    """`scoring_provider` as a recipe's `runtimes` (and a manifest's) names it."""
    return get_provider(scoring_provider(providers)).target or get_provider(REFERENCE).target


def portable_targets(providers: tuple[str, ...]) -> list[str]:
    """The providers that read standard ONNX operators only (candidates keep their graphs so)."""
    return [p for p in providers if get_provider(p).standard_ops_only]


def candidate_recipe(
    recipe: Recipe, candidate: Candidate, validation: Validation, providers: tuple[str, ...] = ("cpu",)
) -> Recipe:
    """The recipe with the candidate's quantization, scored on the validation images.

    The accuracy gate is the search's business, not the build's; the PyTorch model is not scored
    (its ONNX FP32 file is the baseline every candidate is compared with). For OpenVINO targets
    the graphs stay standard ONNX and every candidate is checked on them too."""
    data = (load_student(recipe, candidate.source) if candidate.source else recipe).model_dump()
    data["data"] = recipe.data.model_dump()  # the same images for every candidate
    data["name"] = f"{recipe.artifact_name}.{candidate.name}"
    data["data"] = validation.data(data["data"])
    data["evaluate"] |= {"samples": None, "torch": False}
    data["quantize"] = candidate.quantize
    data["output"] = {"dir": tune_folder(recipe), "name": None}
    data["runtimes"] = recipe_targets(providers)
    return Recipe.model_validate(data)


def validation_images(recipe: Recipe, settings: TuneSettings) -> Validation:
    """The dataset's own split when asked for, else `settings.holdout` training images, or a
    fifth of the train split when that is smaller."""
    from vitdeploy.data.datasets import load_split

    whole = recipe.data.model_copy(update={"holdout": None})  # memory-mapped: only the labels are read
    split = settings.validation_split
    if settings.holdout_from not in (None, whole.train_split):
        return held_out_of_test(whole, settings)
    if split is not None:
        if split in (whole.train_split, whole.eval_split, VALIDATION):
            raise UserError(
                f"--validation {split}: candidates are scored on a split of their own, not the "
                f"train ({whole.train_split}) or test ({whole.eval_split}) split; without one, leave it out"
            )
        return Validation(len(load_split(whole.model_copy(update={"eval_split": split}), split).labels), split)
    train = len(load_split(whole, whole.train_split).labels)
    return Validation(max(1, min(settings.holdout, train // 5)))


def held_out_of_test(data: DataSpec, settings: TuneSettings) -> Validation:
    """`settings.holdout` images of the test split (at most half of it) as the validation images."""
    from vitdeploy.data.datasets import load_split

    if settings.holdout_from != data.eval_split:
        raise UserError(
            f"--holdout-from {settings.holdout_from}: held-out images come from the train ({data.train_split}) "
            f"or the test ({data.eval_split}) split"
        )
    if settings.validation_split is not None:
        raise UserError("--holdout-from and --validation both choose the validation images: give one")
    test = len(load_split(data, data.eval_split).labels)
    return Validation(max(1, min(settings.holdout, test // 2)), source=data.eval_split)


def tune(recipe: Recipe, recipe_path: Path, settings: TuneSettings, device: Any) -> dict:
    """Search, choose, write `<name>.tuned.yaml` beside the recipe and build it; returns the report."""
    started = time.perf_counter()
    folder = tune_folder(recipe)
    report_path = folder / "tune.json"
    earlier = read_earlier(report_path)
    validation = validation_images(recipe, settings)
    if settings.students and validation.split is None and validation.source is None:
        console.print(
            "[yellow]students are scored on held-out training images: if the model tuned was trained on them "
            "(the students are not), they favour it; a split of the dataset's own (--validation val) or "
            "images held out from the test split (--holdout-from test) do not"
        )
    tried = build_candidates(recipe, recipe_path, settings, validation, device, started)
    baseline = next((t for t in tried if is_baseline(t.candidate) and t.top1 is not None), None)
    if baseline is None:
        raise BuildError(f"the FP32 candidate did not build: {tried[0].error}; nothing to compare with")
    for t in tried:
        if t.top1 is not None:
            t.drop = round(baseline.top1 - t.top1, 2)
    built = [t for t in tried if t is not baseline and t.drop is not None]  # all timed: the front needs them
    measure_speeds(baseline, built, settings, folder, earlier)
    scoring_started = time.perf_counter()
    score_losses(recipe, baseline, built, validation, settings, folder)
    intervals_s = time.perf_counter() - scoring_started
    leader = choose(tried, baseline, settings)
    eligible = [t for t in tried if t.verdict.startswith(("within budget", "chosen")) and t is not baseline]
    cap = settings.runoff_s if settings.runoff_s is not None else runoff_cap(time.perf_counter() - started)
    winner, runoff = run_off_leaders(leader, tried, baseline, settings, cap, earlier_runoff(report_path, settings))
    mark_borderline(tried, eligible, winner, settings.max_drop)
    tuned = write_tuned_recipe(recipe, recipe_path, winner, validation, settings.providers)
    report = {
        "recipe": str(recipe_path),
        "max_drop": settings.max_drop,
        "settings": asdict(settings),
        "validation_images": validation.images,
        "validation_split": validation.split,
        "validation_source": validation.source or recipe.data.train_split,
        "fp32_validation_top1": baseline.top1,
        "candidates": [t.record() for t in tried],
        "winner": winner.candidate.name,
        "runoff": runoff,
        "loss_intervals_s": round(intervals_s, 1),
        "tuned_recipe": str(tuned),
        "search_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(report_path, report)
    report["picture"] = draw_front(report, folder / "pareto.png")
    student_won = winner.candidate.source is not None  # then the test top-1 to beat is the tuned model's FP32
    report["test"] = build_tuned(tuned, device, scoring_runtime(settings.providers), Path(baseline.file) if student_won else None)
    report["total_s"] = round(time.perf_counter() - started, 1)
    write_json_atomic(report_path, report)
    return report


def score_losses(recipe: Recipe, baseline: Tried, built: list[Tried], validation: Validation, settings: TuneSettings,
                 folder: Path) -> None:  # fmt: skip
    """Each candidate's loss with its paired interval, on the images it was scored on, where it was scored."""
    import onnx

    from vitdeploy.data.classes import decode_size
    from vitdeploy.data.datasets import load_split
    from vitdeploy.onnx.graph import token_count
    from vitdeploy.pipeline.build import resolve
    from vitdeploy.tune.settle import add_drop_intervals

    r = resolve(candidate_recipe(recipe, baseline.candidate, validation, settings.providers))
    images = load_split(r.data, r.data.eval_split, decode_size(r)).subset(r.evaluate.samples)
    batch = evaluation_batch(token_count(onnx.load(baseline.file, load_external_data=False)), r.evaluate.batch_size)
    add_drop_intervals(baseline, built, images, scoring_provider(settings.providers), batch, folder / "predictions")


def draw_front(report: dict, target: Path) -> str | None:
    """The speed/accuracy picture, when matplotlib is installed (the search stands without it)."""
    from vitdeploy.tune.plot import plot_front

    try:
        return str(plot_front(report, target))
    except UserError as err:
        console.print(f"[yellow]{err}; no picture drawn")
        return None


def build_candidates(
    recipe: Recipe, recipe_path: Path, settings: TuneSettings, validation: Validation, device: Any, started: float
) -> list[Tried]:
    """Build the search space; when static INT8 loses more than the budget, also static INT8
    with its most sensitive layers kept in float (ranked by `sensitivity`)."""
    nncf = nncf_applies(settings.providers)
    queue, tried, fallbacks_added = candidates(recipe, nncf=nncf), [], False
    for path in settings.students:
        queue += student_candidates(load_student(recipe, path), path, nncf=nncf)
    while len(tried) < len(queue):
        i, candidate = len(tried), queue[len(tried)]
        if settings.minutes is not None and i > 1 and time.perf_counter() - started > 60 * settings.minutes:
            console.print(f"[yellow]--minutes {settings.minutes:g} spent: {len(queue) - i} candidates not built")
            break
        console.rule(f"[bold]tune: candidate {i + 1}/{len(queue)}: {candidate.name}")
        tried.append(build_one(recipe, recipe_path, candidate, validation, device, settings.providers))
        if len(tried) == len(queue) and not fallbacks_added:
            fallbacks_added = True
            queue += fallback_candidates(recipe, tried, settings, validation)
            queue += accuracy_controlled(tried, settings, validation)
    return tried


def nncf_applies(providers: tuple[str, ...]) -> bool:
    """NNCF's quantizer is a candidate for OpenVINO targets, when `vitdeploy[openvino]` is installed."""
    from importlib.util import find_spec

    return any("nncf" in get_provider(p).quantizers for p in providers) and find_spec("nncf") is not None


def is_baseline(c: Candidate) -> bool:
    return c.is_float and c.source is None


def load_student(recipe: Recipe, path: Path) -> Recipe:
    """A student's recipe, refused unless it reads the same images as the recipe tuned."""
    from vitdeploy.recipe.schema import load_recipe

    student = load_recipe(path)
    if (student.data.dataset, student.data.source) != (recipe.data.dataset, recipe.data.source):
        raise UserError(
            f"--candidates {path}: its data ({student.data.dataset}) is not {recipe.artifact_name}'s "
            f"({recipe.data.dataset}); candidates are compared on the same held-out images"
        )
    return student


def build_one(
    recipe: Recipe, recipe_path: Path, candidate: Candidate, validation: Validation, device: Any, providers: tuple[str, ...]
) -> Tried:
    from vitdeploy.pipeline.build import build

    r = candidate_recipe(recipe, candidate, validation, providers)
    t = Tried(candidate, r.artifact_name)
    try:
        manifest = reuse_manifest(r) or BuildManifest.from_dict(build(r, recipe_path, device), r.artifact_name)
    except (BuildError, UserError) as err:
        t.error, t.verdict = str(err), f"failed: {err}"
        return t
    record = manifest.artifacts["onnx"]
    t.top1 = round(100 * manifest.runtime_top1[scoring_runtime(providers)], 2)
    t.file, t.sha256, t.bytes = str(r.output.dir / record.file), record.sha256, record.bytes
    if "fp32_onnx" in manifest.artifacts:
        t.fp32_file = str(r.output.dir / manifest.file("fp32_onnx"))
    return t


def top1_on_test_images(r: Recipe, fp32: Path, runtime: str) -> float:
    """Top-1 of the FP32 file `fp32` on the images the build of `r` was scored on, on `runtime`."""
    import onnx

    from vitdeploy.data.classes import decode_size
    from vitdeploy.data.datasets import load_split
    from vitdeploy.data.scoring import predict_accuracy
    from vitdeploy.onnx.graph import read_preprocess, token_count
    from vitdeploy.pipeline.build import resolve
    from vitdeploy.runtime.sessions import open_predictor

    r = resolve(r)  # decoded as its build decoded them
    graph = onnx.load(str(fp32), load_external_data=False)
    pre, size = read_preprocess(graph)
    images = load_split(r.data, r.data.eval_split, decode_size(r)).subset(r.evaluate.samples)
    predict = open_predictor(fp32, target_provider(runtime).name)
    batch = evaluation_batch(token_count(graph), r.evaluate.batch_size)
    return predict_accuracy(predict, images, pre, size, batch, f"FP32 {fp32.name}")


FALLBACK_COUNTS = (1, 2, 4, 8)  # most sensitive layer groups kept in float, one candidate each
SENSITIVITY_IMAGES = 500


def fallback_candidates(recipe: Recipe, tried: list[Tried], settings: TuneSettings, validation: Validation) -> list[Candidate]:
    """Static INT8 with its 1, 2, 4 and 8 most harmful layer groups in float, and with them
    quantized dynamically instead, if static INT8 is over budget (a group: the layers reading
    one input, which ONNX Runtime quantizes once)."""
    fp32 = next((t for t in tried if is_baseline(t.candidate) and t.top1 is not None), None)
    static = next((t for t in tried if t.candidate.name == "static" and t.candidate.source is None and t.fp32_file), None)
    if fp32 is None or static is None or fp32.top1 - static.top1 <= settings.max_drop:
        return []
    console.rule("[bold]tune: static INT8 is over budget: which layers lose it (each quantized alone)")
    scored = candidate_recipe(recipe, static.candidate, validation, settings.providers)
    ranking = sensitivity_ranking(scored, Path(static.fp32_file))
    base = static.candidate.quantize
    found = []
    for k in (k for k in FALLBACK_COUNTS if k < len(ranking)):
        groups = f"{k} most sensitive layer group{'s' if k > 1 else ''}"
        found += [
            Candidate(f"static-fallback{k}", f"static INT8 with its {groups} kept in float",
                      base | {"exclude_nodes": sorted(set(base.get("exclude_nodes", [])).union(*ranking[:k]))}),
            Candidate(f"static-dynamic{k}", f"static INT8 with its {groups} quantized dynamically (ranges per batch)",
                      base | {"dynamic_nodes": sorted(set().union(*ranking[:k]))}),
        ]  # fmt: skip
    return found


def accuracy_controlled(tried: list[Tried], settings: TuneSettings, validation: Validation) -> list[Candidate]:
    """NNCF's accuracy control for each NNCF candidate over budget, with the budget its model
    leaves: a student's own FP32 file has spent part of it already. It scores on held-out images,
    so not with a split of the dataset's own (`--validation`)."""
    fp32 = next((t for t in tried if is_baseline(t.candidate) and t.top1 is not None), None)
    if fp32 is None or validation.split is not None:
        return []
    found = []
    for t in tried:
        c = t.candidate
        if c.quantize.get("backend") != "nncf" or t.top1 is None or fp32.top1 - t.top1 <= settings.max_drop:
            continue
        own = next((u for u in tried if u.candidate.is_float and u.candidate.source == c.source and u.top1 is not None), None)
        left = settings.max_drop - (fp32.top1 - own.top1) if own else 0.0
        if left > 0:
            idea = f"{c.idea}, with NNCF's accuracy control: quantizers reverted until within {left:.2g} points"
            quantize = c.quantize | {"nncf_max_drop": round(left, 2)}
            found.append(replace(c, name=f"{c.name}-accuracy-control", idea=idea, quantize=quantize))
    return found


def sensitivity_ranking(r: Recipe, fp32: Path) -> list[tuple[str, ...]]:
    """Layers of `fp32` (a static candidate's float file), most harmful in INT8 first, scored on
    held-out images; kept beside it and reused while the file is unchanged."""
    import json

    from vitdeploy.core.contract import INPUT_NAME
    from vitdeploy.data.classes import decode_size
    from vitdeploy.data.datasets import load_split
    from vitdeploy.onnx.graph import read_preprocess, token_count
    from vitdeploy.onnx.quantize import ArrayCalibrationReader
    from vitdeploy.onnx.sensitivity import layer_sensitivity
    from vitdeploy.pipeline.build import calibration_images

    saved = fp32.with_name(f"{fp32.name}.sensitivity.json")
    digest = sha256_file(fp32)
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("sha256") == digest and old.get("layers") and "nodes" in old["layers"][0]:
            return [tuple(row["nodes"]) for row in old["layers"]]
    import onnx

    from vitdeploy.pipeline.build import resolve

    r = resolve(r)  # calibration images preprocessed, and held-out ones decoded, as the build did
    graph = onnx.load(str(fp32), load_external_data=False)
    pre, size = read_preprocess(graph)
    batch = calibration_batch(token_count(graph), r.quantize.calibration.batch_size)
    reader = ArrayCalibrationReader(INPUT_NAME, calibration_images(r, size), batch)
    images = load_split(r.data, r.data.eval_split, decode_size(r)).subset(SENSITIVITY_IMAGES, seed=3)
    found = layer_sensitivity(fp32, r.quantize, reader, images, pre, size)
    write_json_atomic(saved, {"sha256": digest, "layers": [s.as_dict() for s in found]})
    return [s.nodes for s in found]


TOOLS = ("vitdeploy_source", "torch", "timm", "onnx", "onnxruntime", "openvino")  # what makes a build's files


def made_by(manifest: BuildManifest) -> tuple:
    return tuple(manifest.environment.get(k) for k in TOOLS)


def made_by_now(r: Recipe) -> tuple:
    from vitdeploy.pipeline.build import environment

    return tuple(environment(list(r.runtimes)).get(k) for k in TOOLS)


def reuse_manifest(r: Recipe) -> BuildManifest | None:
    """The manifest of an earlier build of exactly this candidate, if its files are unchanged and
    the same code and libraries would make them."""
    from vitdeploy.delivery.manifests import current_manifest

    manifest = current_manifest(r, lambda m: made_by(m) == made_by_now(r))
    if manifest is not None:
        console.print(f"[cyan]reusing the earlier build of {r.artifact_name}")
    return manifest


def write_tuned_recipe(
    recipe: Recipe, recipe_path: Path, winner: Tried, validation: Validation, providers: tuple[str, ...]
) -> Path:
    """`<name>.tuned.yaml` beside the recipe: the recipe as written, with the winner's
    quantization (relative paths in it stay valid)."""
    from vitdeploy.core.storage import atomic_path
    from vitdeploy.recipe.schema import read_recipe_data

    source = winner.candidate.source or recipe_path  # its relative paths hold beside it
    data = read_recipe_data(source)
    data["name"] = f"{recipe.name}.tuned"  # a recipe is named as its file
    data.get("output", {}).pop("name", None)  # the artifact is named after the tuned recipe
    speed = ", ".join(f"{s.speedup:.2f}x at {s.cell}" for s in winner.speeds) or "float"
    data["description"] = (
        f"{recipe.name} tuned: {winner.candidate.idea}; top-1 {-winner.drop:+.2f} points against FP32 on "
        f"{validation.describe()}, {speed} against FP32"
    )
    data["quantize"] = winner.candidate.quantize
    if validation.source or "nncf_max_drop" in winner.candidate.quantize:
        data["data"] = validation.reported(data.get("data", {}), keep_holdout=True)
    if portable_targets(providers):  # the graph the candidate was: standard operators, checked there
        data["runtimes"] = recipe_targets(providers)
    target = source.with_name(f"{recipe.name}.tuned.yaml")
    with atomic_path(target) as tmp:
        tmp.write_text(
            "# Written by `vitdeploy tune`: rebuild with `vitdeploy build` (the test split scores it).\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
    return target


def build_tuned(tuned: Path, device: Any, runtime: str, fp32: Path | None = None) -> dict:
    """Build the tuned recipe (scored on the test split); its drop and artifact. `runtime`: where
    its top-1 counts (FP32's is ONNX Runtime's). `fp32`: the FP32 file the drop is against, when
    it is not the tuned build's own (a student won: its drop counts against the model tuned)."""
    from vitdeploy.pipeline.build import build
    from vitdeploy.recipe.schema import load_recipe

    console.rule("[bold]tune: building the chosen recipe (scored on the test split)")
    r = load_recipe(tuned)
    manifest = reuse_manifest(r) or BuildManifest.from_dict(build(r, tuned.resolve(), device), str(tuned))
    reference = manifest.top1["onnx_fp32"] if fp32 is None else top1_on_test_images(r, fp32, runtime)
    final = manifest.runtime_top1[runtime]
    return {
        "artifact": str(r.output.dir / manifest.file("onnx")),
        "test_top1_fp32": round(100 * reference, 2),
        "test_top1": round(100 * final, 2),
        "test_drop": round(100 * (reference - final), 2),
        "split": r.data.eval_split,
        "sha256": sha256_file(r.output.dir / manifest.file("onnx")),
    }
