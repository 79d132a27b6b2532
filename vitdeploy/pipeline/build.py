"""Runs a recipe: stages in PyTorch, export, optimize, quantize, evaluate, manifest.

Intermediate files live in `<output.dir>/.work/<name>/`; stage outputs there are reused
when the model, its weights and the stages so far are unchanged. Final artifacts are
renamed into `<output.dir>` only after every gate passed, and the manifest is written last,
so a failed or interrupted build leaves no half-written artifact behind.

Over 500 lines: the build's steps in the order they run, each a short function; its export cache
is already its own module. The next split: the publishing step (stage_files, publish) into its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from vitdeploy import __version__
from vitdeploy.core.batching import calibration_batch, evaluation_batch
from vitdeploy.core.contract import InputContract, artifact_top1
from vitdeploy.core.errors import BuildError
from vitdeploy.core.locking import exclusive
from vitdeploy.core.memory import release_freed_memory
from vitdeploy.core.progress import console
from vitdeploy.core.providers import target_provider
from vitdeploy.core.storage import sha256_file, source_digest, storage_faults, write_json_atomic
from vitdeploy.data.classes import check_head_matches, decode_size, mismatch, with_head_for_data
from vitdeploy.data.datasets import VALIDATION, ImageSet, PreprocessedImages, data_identity, load_split
from vitdeploy.data.scoring import onnx_accuracy, predict_accuracy
from vitdeploy.onnx.fusion import optimize_transformer
from vitdeploy.onnx.graph import stamp_preprocess
from vitdeploy.onnx.nncf_quantize import ValidationImages
from vitdeploy.onnx.quantize import ArrayCalibrationReader, quantize_model
from vitdeploy.pipeline.export_cache import fp32_key, reuse_fp32, store_fp32
from vitdeploy.recipe.schema import Recipe
from vitdeploy.runtime.backends import backend_for
from vitdeploy.runtime.sessions import ProviderUnavailable, open_predictor, open_session
from vitdeploy.torch.evaluate import torch_accuracy
from vitdeploy.torch.export import INPUT_NAME, Parity, check_parity, export_onnx, reference_logits
from vitdeploy.torch.models import (
    count_macs,
    count_parameters,
    create_model,
    describe,
    load_model,
    num_tokens,
    save_weights,
    with_weights_preprocess,
)
from vitdeploy.torch.stages import StageContext, get_stage


def work_dir(recipe: Recipe) -> Path:
    return recipe.output.dir / ".work" / recipe.artifact_name


def referenced_files(value: object) -> list[Path]:
    """Every existing file a config refers to (checkpoints, teachers), in order."""
    if isinstance(value, Path):
        return [value] if value.is_file() else []
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return [f for v in value.values() for f in referenced_files(v)]
    if isinstance(value, list | tuple):
        return [f for v in value for f in referenced_files(v)]
    return []


def stage_keys(recipe: Recipe) -> list[str]:
    """Identity of the model before any stage, then after each stage, in order.

    Each key covers the model spec and its checkpoint's content, the data (content fingerprint,
    splits, preprocessing) and every stage config up to it with the content of each file they
    name (a teacher's weights, say). Anything else that changes leaves the cache valid. One
    running hash: every file and the data are read once, however many stages there are.
    """
    h = hashlib.sha256(recipe.model.model_dump_json().encode())
    h.update(json.dumps(data_identity(recipe.data), sort_keys=True).encode())
    for path in referenced_files(recipe.model):
        h.update(sha256_file(path).encode())
    keys = [h.copy().hexdigest()[:12]]
    for cfg in recipe.stages:
        h.update(cfg.cache_json().encode())
        for path in referenced_files(cfg):
            h.update(sha256_file(path).encode())
        keys.append(h.copy().hexdigest()[:12])
    return keys


def stage_key(recipe: Recipe, upto: int) -> str:
    """The key of the model after stage `upto` (see `stage_keys`)."""
    return stage_keys(recipe)[upto + 1]


def run_stages(
    recipe: Recipe, device: torch.device, checkpoint_every_s: float = 300.0, keys: list[str] | None = None
) -> tuple[nn.Module, list[dict]]:
    """Apply the recipe's stages in order, reusing a stage's saved output when it is current.

    Each stage's output is saved with its architecture, so a cached pruned, distilled or
    Nyström model rebuilds exactly. The report is written after the weights: a stage folder
    with both is complete. Returns the model and one report per stage position. `keys`: the
    recipe's `stage_keys`, when the caller has them (they hash every file the recipe names).
    """
    keys = keys or stage_keys(recipe)
    model = create_model(with_head_for_data(recipe).model)  # the recipe itself (and its hash) unchanged
    transfer = getattr(model, "vitdeploy_transfer", None)  # what a transfer reset, for the manifest
    splits: dict = {}
    reports = []
    for i, (cfg, key) in enumerate(zip(recipe.stages, keys[1:], strict=True)):
        folder = work_dir(recipe) / f"{i}-{cfg.stage}-{key}"
        weights, report_file = folder / "model.safetensors", folder / "report.json"
        done = finished_stage(recipe, folder.name)
        cached = done is not None
        if done is not None:
            console.print(f"[cyan]stage {i} {cfg.stage}: reusing {done[0]}")
            model, report = done
        else:
            console.rule(f"stage {i}: {cfg.stage}")
            ctx = StageContext(
                recipe=recipe, device=device, work_dir=folder, index=i, checkpoint_every_s=checkpoint_every_s, _splits=splits
            )
            model = get_stage(cfg.stage)(model, ctx, cfg)
            report = ctx.report
            save_weights(model, weights)
            write_json_atomic(report_file, report)
        reports.append(
            {"index": i, "stage": cfg.stage, "config": cfg.model_dump(mode="json"), "cached": cached, "report": report}
        )
    model.vitdeploy_transfer = transfer
    return model.to(device).eval(), reports


def finished_stage(recipe: Recipe, name: str) -> tuple[nn.Module, dict] | None:
    """The model and report of a finished stage output `name` (its position, stage and key), in
    this recipe's work folder or, read only, in another recipe's beside it.

    Why: the key covers everything the output depends on, so recipes that differ after their
    stages (the quantization candidates `tune` builds of one pruned student, say) share it
    instead of training it again. A folder with both files is complete (the report is written
    last); one removed while it is read (a `clean` of that recipe) is passed over."""
    own = work_dir(recipe) / name
    for folder in [own, *sorted(p for p in (recipe.output.dir / ".work").glob(f"*/{name}") if p != own)]:
        weights, report = folder / "model.safetensors", folder / "report.json"
        if weights.is_file() and report.is_file():
            try:
                return load_model(weights), json.loads(report.read_text())
            except (OSError, ValueError):
                continue
    return None


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str, busy: str | None = None) -> Iterator[None]:
        """Time a build step (added up when it runs in parts); `busy` shows a spinner with that
        text (steps without a progress bar)."""
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        with console.status(busy) if busy else contextlib.nullcontext():
            yield
        release_freed_memory()  # what the step let go of, before the next step's peak adds to it
        took = time.perf_counter() - start
        self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 2)  # a step may run in parts
        console.print(f"[dim]{name}: {took:.1f} s")


def environment(runtimes: list[str]) -> dict:
    """Where the build ran: the machine record `bench` writes too, and the build's libraries."""
    import onnx
    import timm

    from vitdeploy.runtime.environment import machine_record

    record = machine_record(target_provider(r) for r in runtimes)
    return record | {
        "vitdeploy": __version__,
        "vitdeploy_source": source_digest(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "cpu_count": record["logical_cores"],
    }


def file_record(path: Path, name: str | None = None) -> dict:
    """Size and hash of `path`, under the name it is published as (`name`, default its own)."""
    return {"file": name or path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def lock_path(recipe: Recipe) -> Path:
    # Beside the work folders, not in one: `clean` removes the recipe's folder while holding it.
    # Artifact names never start with a dot, so `.locks` is no recipe's folder.
    return recipe.output.dir / ".work" / ".locks" / recipe.artifact_name


@contextlib.contextmanager
def recipe_lock(recipe: Recipe, *, wait: bool = True) -> Iterator[None]:
    """Hold the recipe's build lock: one build (or clean) of an artifact at a time."""

    def say(message: str) -> None:
        console.print(message, soft_wrap=True, highlight=False, markup=False)

    with exclusive(lock_path(recipe), f"a build of {recipe.artifact_name}", wait=wait, say=say) as killed:
        if killed is not None:
            say(f"taking over from a build of {recipe.artifact_name} that was killed: {killed.describe()}")
        yield


def clean(recipe: Recipe, *, wait: bool = True) -> int:
    """Remove the recipe's cache (stage outputs, training checkpoints, work files); bytes freed.

    Waits for a build of the same recipe to finish first (`wait` False: refuses at once)."""
    with recipe_lock(recipe, wait=wait):
        return remove_work(recipe)


def remove_work(recipe: Recipe) -> int:
    work = work_dir(recipe)
    freed = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) if work.is_dir() else 0
    shutil.rmtree(work, ignore_errors=True)
    remove_stale_temporaries(recipe)
    return freed


def remove_stale_temporaries(recipe: Recipe) -> None:
    """Temporary files a killed build left behind (a clean exit removes its own).

    Only called with the recipe's lock held: no other build of it is writing them now."""
    out, name = recipe.output.dir, recipe.artifact_name
    for tmp in [*out.glob(f".{name}.*.tmp"), *work_dir(recipe).rglob(".*.tmp")]:
        tmp.unlink(missing_ok=True)
    for scratch in work_dir(recipe).glob(".quantize-*"):
        shutil.rmtree(scratch, ignore_errors=True)


def build(
    recipe: Recipe,
    recipe_path: Path,
    device: torch.device,
    *,
    fresh: bool = False,
    checkpoint_every_s: float = 300.0,
    wait: bool = True,
) -> dict:
    """Build the recipe's artifacts; returns the manifest (also written beside them).

    Rerunning an interrupted build continues from what it saved: finished stages, and the
    training state of the stage it was in. `fresh` drops all of that first. A second build of
    the same artifact waits for the first (`wait` False: refuses at once). A full or read-only
    disk ends the build with a `StorageError` naming the folder; what was published before
    stays as it was.
    """
    with recipe_lock(recipe, wait=wait), storage_faults(recipe.output.dir):
        return build_locked(recipe, recipe_path, device, fresh=fresh, checkpoint_every_s=checkpoint_every_s)


def build_locked(
    recipe: Recipe, recipe_path: Path, device: torch.device, *, fresh: bool = False, checkpoint_every_s: float = 300.0
) -> dict:
    """`build`, with the recipe's lock held."""
    started = time.perf_counter()
    timer = Timer()
    declared, recipe = recipe, resolve(recipe)  # the manifest names the recipe as written
    if fresh:
        remove_work(recipe)
    remove_stale_temporaries(recipe)
    work = work_dir(recipe)  # created by the first file written there: bad input leaves nothing behind
    pre = recipe.data.preprocess

    check_head_matches(recipe)  # before any training: both counts are known without work
    with timer.step("stages"):
        keys = stage_keys(recipe)  # once: it hashes the checkpoint, the teachers and the data
        model, stage_reports = run_stages(recipe, device, checkpoint_every_s, keys)
    img_size, eval_batch = model.patch_embed.img_size[0], evaluation_batch(num_tokens(model), recipe.evaluate.batch_size)
    with timer.step("data"):
        eval_set = load_split(recipe.data, recipe.data.eval_split, decode_size(recipe)).subset(recipe.evaluate.samples)
        parity_set = eval_set.subset(recipe.export.parity_samples, seed=1)
    if model.num_classes != len(eval_set.classes):  # never publish outputs that labels cannot name
        raise BuildError(f"{mismatch(model.num_classes, eval_set.classes, recipe.data.dataset)}; no artifact written")
    cal_images, smoothing = None, None  # calibration images: read once, when first needed
    if recipe.quantize.mode != "none" and recipe.quantize.smooth_alpha:
        with timer.step("smooth", "SmoothQuant: folding activation scales into the weights"):
            cal_images = calibration_images(recipe, img_size)
            smoothing = smooth_step(recipe, model, cal_images, device)
    fp32 = work / "fp32.onnx"
    facts = pytorch_facts(recipe, model, device, eval_set, parity_set, eval_batch, timer)
    exported = export_fp32(recipe, model, facts, keys[-1], parity_set, fp32, timer, reuse=not fresh)
    del model  # the ONNX steps ahead peak highest; the PyTorch model is not needed for them
    release_freed_memory()
    if isinstance(exported, RawExport):
        exported = optimize_fp32(recipe, exported, fp32, timer)
    reference = facts.reference
    with timer.step("parity", "checking the FP32 file against PyTorch on real images"):
        parity = check_parity(reference, fp32, parity_set, pre, img_size)
    check_parity_gate(recipe, parity)
    int8, quantize_report = None, None
    if recipe.quantize.mode != "none":
        int8 = work / "int8.onnx"
        with timer.step("quantize", f"{recipe.quantize.mode} INT8 quantization (calibrating when static)"):
            if cal_images is None and uses_calibration(recipe):
                cal_images = calibration_images(recipe, img_size)
            quantize_report = quantize_step(recipe, fp32, int8, cal_images, facts.tokens) | {"smoothquant": smoothing}
    with timer.step("evaluate"):
        top1 = facts.top1 | evaluate_onnx(recipe, eval_set, fp32, int8, eval_batch)
        runtimes = check_runtimes(
            recipe,
            reference,
            img_size,
            eval_batch,
            parity_set,
            eval_set,
            fp32,
            int8,
            top1,
            parity,
        )
    check_accuracy_gate(recipe, top1)

    preprocessing = preprocessing_record(recipe, img_size, eval_set.classes)
    for path in (fp32, int8):
        if path is not None:
            stamp_preprocess(path, preprocessing)
    # Every gate passed: everything is written in the work folder first, so a full disk stops
    # the build before the output folder changes; then renames (atomic, no space needed).
    staged = stage_files(recipe, facts.weights, fp32, int8)
    files = {key: file_record(ready, published.name) for key, (ready, published) in staged.items()}
    manifest = {
        **recipe_record(declared, recipe_path),
        "model": facts.record,
        "preprocess": preprocessing,
        "artifacts": files,
        "export": {
            **recipe.export.model_dump(mode="json", include={"exporter", "opset", "split_qkv", "dynamic_batch"}),
            "parity_exported": exported.parity_exported,
            "parity": parity.as_dict(),
            **({"reused": exported.reused} if exported.reused else {}),
        },
        "optimize": exported.optimize,
        "quantize": quantize_report,
        "evaluate": {"split": recipe.data.eval_split, "images": len(eval_set), "top1": top1},
        "runtimes": runtimes,
        "stages": stage_reports,
        "sizes_bytes": {k: v["bytes"] for k, v in files.items()},
        "timings_s": timer.seconds | {"total": round(time.perf_counter() - started, 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "environment": environment(recipe.runtimes),
    }
    write_json_atomic(work / "manifest.json", manifest)
    publish(recipe, staged, work / "manifest.json")
    return manifest


def check_parity_gate(recipe: Recipe, parity: Parity) -> None:
    if parity.top1_agreement < recipe.export.min_top1_agreement:
        raise BuildError(
            f"ONNX parity failed: top-1 agreement {parity.top1_agreement:.2%} < "
            f"{recipe.export.min_top1_agreement:.2%} (max |logit diff| {parity.max_abs_logit_diff:.3g}); "
            "no artifact written"
        )


def model_record(model: nn.Module, img_size: int) -> dict:
    record = {"parameters": count_parameters(model), "macs": count_macs(model, img_size)}
    record["architecture"] = describe(model).summary()
    transfer = getattr(model, "vitdeploy_transfer", None)
    return record | ({"transfer": transfer} if transfer else {})


def portable(recipe: Recipe) -> bool:
    """Runtimes other than ONNX Runtime read standard ONNX operators only."""
    return any(target_provider(r).standard_ops_only for r in recipe.runtimes)


@dataclass(frozen=True)
class PyTorchFacts:
    """All the build needs from the PyTorch model after export, taken before it is let go.

    Why: at 224x224 the ONNX steps (optimizer, shape inference, calibration) peak highest, and
    the model (343 MB for ViT-B/16) would otherwise sit in memory under them."""

    reference: np.ndarray  # logits of the parity images: every parity check compares against them
    top1: dict[str, float]  # {"torch": top-1} when the recipe evaluates in PyTorch
    record: dict  # the manifest's model section
    tokens: int
    weights: Path | None  # the compressed model's file, when the recipe has stages


def pytorch_facts(
    recipe: Recipe,
    model: nn.Module,
    device: torch.device,
    eval_set: ImageSet,
    parity_set: ImageSet,
    eval_batch: int,
    timer: Timer,
) -> PyTorchFacts:
    pre, img_size = recipe.data.preprocess, model.patch_embed.img_size[0]
    reference = reference_logits(model, parity_set, pre, img_size)
    top1 = {}
    if recipe.evaluate.torch:
        with timer.step("evaluate"):
            top1["torch"] = torch_accuracy(model, eval_set, pre, device, eval_batch)
    weights = None
    if recipe.stages:
        weights = work_dir(recipe) / "model.safetensors"
        save_weights(model, weights)
    return PyTorchFacts(reference, top1, model_record(model, img_size), num_tokens(model), weights)


@dataclass(frozen=True)
class Fp32Export:
    """How the FP32 file came to be."""

    parity_exported: dict  # the exporter's file against PyTorch, before fusion
    optimize: dict | None  # the optimizer's report
    reused: str | None  # the shared entry's key when another recipe built this file


@dataclass(frozen=True)
class RawExport:
    """The exporter's file, checked against PyTorch, before the optimizer runs."""

    path: Path
    key: str  # its entry in the shared export cache
    parity: dict


def export_fp32(
    recipe: Recipe,
    model: nn.Module,
    facts: PyTorchFacts,
    model_key: str,
    parity_set: ImageSet,
    fp32: Path,
    timer: Timer,
    *,
    reuse: bool = True,
) -> Fp32Export | RawExport:
    """The FP32 file at `fp32`, reused from another recipe of the same model when one built it
    already (and `reuse`); else the exporter's file, checked, for `optimize_fp32` to finish.
    `model_key`: the model's identity after its stages (`stage_keys`). The model is exported as
    it is, without a copy: the build needs nothing more from it (`facts`)."""
    pre, img_size = recipe.data.preprocess, model.patch_embed.img_size[0]
    key = fp32_key(recipe, model_key, fuse_attention(recipe), portable(recipe))
    with timer.step("export", "exporting to ONNX and checking parity on real images"):
        stored = reuse_fp32(recipe, key, fp32) if reuse else None
        if stored is not None:
            console.print(f"[cyan]reusing the FP32 export {key} (same model and export options)")
            return Fp32Export(stored["parity_exported"], stored["optimize"], key)
        raw = export_onnx(model, recipe.export, img_size, fp32.parent / "export.onnx", in_place=True)
        return RawExport(raw, key, check_parity(facts.reference, raw, parity_set, pre, img_size).as_dict())


def optimize_fp32(recipe: Recipe, raw: RawExport, fp32: Path, timer: Timer) -> Fp32Export:
    """Optimize the exporter's file into `fp32`, and keep it for the next recipe of the model."""
    with timer.step("optimize", "fusing with ONNX Runtime's transformer optimizer"):
        optimized = optimize_step(recipe, raw.path, fp32)
        not_kept = store_fp32(recipe, raw.key, fp32, {"parity_exported": raw.parity, "optimize": optimized})
        if not_kept:
            console.print(f"[yellow]the FP32 export was not kept for other recipes: {not_kept}", soft_wrap=True)
        raw.path.unlink()
    return Fp32Export(raw.parity, optimized, None)


def fuse_attention(recipe: Recipe) -> bool:
    fuse = recipe.optimize.fuse_attention
    return recipe.quantize.mode != "static" if fuse == "auto" else fuse


def optimize_step(recipe: Recipe, raw: Path, fp32: Path) -> dict | None:
    if not recipe.optimize.enabled:
        shutil.copyfile(raw, fp32)
        return None
    if portable(recipe):
        # ORT's fusions emit its own operators (Attention, BiasGelu, ...) other runtimes cannot read.
        shutil.copyfile(raw, fp32)
        return {"skipped": f"runtimes {recipe.runtimes}: standard ONNX operators only, no ONNX Runtime fusions"}
    # Heads 0: ORT reads each block's head count from its graph (pruned blocks differ).
    return optimize_transformer(raw, fp32, recipe.optimize, 0, 0, fuse_attention(recipe))


def uses_calibration(recipe: Recipe) -> bool:
    """Static scales, SmoothQuant and bias correction all read the calibration images."""
    q = recipe.quantize
    return q.mode == "static" or (q.mode != "none" and bool(q.smooth_alpha or q.bias_correction))


def resolve(recipe: Recipe) -> Recipe:
    """The recipe as a build runs it: its preprocessing decided once, in one order (the recipe's
    `data.preprocess` > the weights' timm `pretrained_cfg` > the defaults). Whatever reads images
    the way a build did (tune's scoring, its sensitivity ranking) starts from this."""
    return with_weights_preprocess(recipe)


def calibration_images(recipe: Recipe, img_size: int) -> PreprocessedImages:
    """The calibration images, read once for every step that needs them and preprocessed batch
    by batch as each step reads them."""
    cal = recipe.quantize.calibration
    cal_set = load_split(recipe.data, cal.split, decode_size(recipe)).subset(cal.samples, seed=2)
    return PreprocessedImages(cal_set.images, recipe.data.preprocess, img_size)


def smooth_step(recipe: Recipe, model: nn.Module, images: PreprocessedImages, device: torch.device) -> dict:
    """SmoothQuant on the calibration images, before export (the FP32 function is unchanged)."""
    from vitdeploy.torch.smoothing import smooth

    batch = calibration_batch(num_tokens(model), recipe.quantize.calibration.batch_size)
    ratios = smooth(model, images, recipe.quantize.smooth_alpha, batch)
    return {"alpha": recipe.quantize.smooth_alpha, "activation_max_over_median_after": [round(r, 2) for r in ratios]}


def quantize_step(recipe: Recipe, fp32: Path, int8: Path, images: PreprocessedImages | None, tokens: int) -> dict:
    spec = recipe.quantize
    batch = calibration_batch(tokens, spec.calibration.batch_size)
    reader = ArrayCalibrationReader(INPUT_NAME, images, batch) if spec.mode == "static" else None
    validation = accuracy_control_images(recipe, images.size) if spec.nncf_max_drop is not None and images else None
    return quantize_model(fp32, int8, spec, reader, images if spec.bias_correction else None, validation)


def accuracy_control_images(recipe: Recipe, img_size: int | None) -> ValidationImages:
    """The held-out images (`data.holdout`) NNCF's accuracy control scores on, on the recipe's OpenVINO runtime."""
    held = load_split(recipe.data, VALIDATION, decode_size(recipe))
    provider = next(p.name for p in map(target_provider, recipe.runtimes) if "nncf" in p.quantizers)
    return ValidationImages(PreprocessedImages(held.images, recipe.data.preprocess, img_size), held.labels, provider)


def check_accuracy_gate(recipe: Recipe, top1: dict[str, float]) -> None:
    if "onnx_int8" not in top1 or recipe.quantize.max_accuracy_drop is None:
        return
    drop = 100 * (top1["onnx_fp32"] - top1["onnx_int8"])
    if drop > recipe.quantize.max_accuracy_drop:
        raise BuildError(
            f"INT8 lost {drop:.2f} top-1 points (> quantize.max_accuracy_drop "
            f"{recipe.quantize.max_accuracy_drop}); no artifact written"
        )


def check_runtimes(
    recipe: Recipe,
    reference: np.ndarray,
    size: int,
    eval_batch: int,
    parity_set: ImageSet,
    eval_set: ImageSet,
    fp32: Path,
    int8: Path | None,
    top1: dict,
    fp32_parity: Parity,
) -> dict:
    """Parity and top-1 of the artifact on every runtime the recipe names.

    What the build already measured on ONNX Runtime (top-1, the FP32 file's parity) is reused;
    `reference`: PyTorch's logits of the parity images.
    """
    final = int8 or fp32
    pre = recipe.data.preprocess
    report = {}
    # Read once: every runtime but ONNX Runtime needs standard operators only.
    foreign = non_standard_ops(final) if portable(recipe) else []
    for runtime in recipe.runtimes:
        provider = target_provider(runtime)
        if foreign and provider.standard_ops_only:
            raise BuildError(f"runtime {runtime}: the artifact holds non-standard operators {foreign}; no artifact written")
        if provider.is_reference:  # what the build measured on ONNX Runtime, reused
            final_top1 = artifact_top1(top1)
            parity = fp32_parity if int8 is None else check_parity(reference, final, parity_set, pre, size)
        else:
            try:
                predict = open_predictor(final, provider.name)  # compiled once for both checks
            except ProviderUnavailable as err:  # a CPU without bfloat16, say: nothing to check it on
                raise BuildError(f"runtime {runtime}: {err}; no artifact written") from None
            final_top1 = predict_accuracy(predict, eval_set, pre, size, eval_batch, f"{runtime} {final.name}")
            parity = check_parity(reference, final, parity_set, pre, size, predict=predict)
        version = backend_for(provider).version()
        report[runtime] = {"top1": final_top1, "parity_vs_pytorch": parity.as_dict(), "version": version}
    return report


def non_standard_ops(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})


def preprocessing_record(recipe: Recipe, img_size: int, classes: tuple[str, ...]) -> dict:
    pre = recipe.data.preprocess
    contract = InputContract(
        img_size, pre.mean, pre.std, pre.interpolation, classes, input_name=INPUT_NAME, crop_pct=pre.crop_pct
    )
    return contract.manifest_record()


def stage_files(recipe: Recipe, weights: Path | None, fp32: Path, int8: Path | None) -> dict[str, tuple[Path, Path]]:
    """Every artifact file, ready in the work folder: {manifest key: (ready file, published path)}.

    `weights`: the compressed PyTorch model's file, when the recipe has stages."""
    name, out = recipe.artifact_name, recipe.output.dir
    staged = {"fp32_onnx": (fp32, out / f"{name}.fp32.onnx"), "onnx": (int8, out / f"{name}.onnx")} if int8 else {}
    staged = staged or {"onnx": (fp32, out / f"{name}.onnx")}
    if weights is not None:
        staged["torch"] = (weights, out / f"{name}.safetensors")
    return staged


def publish(recipe: Recipe, staged: dict[str, tuple[Path, Path]], manifest: Path) -> None:
    """Rename the checked files, then their manifest, into the output folder: all or nothing.

    The previous files are first renamed aside (the manifest first: no manifest ever describes
    files that are not its own) and put back if any rename fails; renames need no space.
    """
    moves = [*staged.values(), (manifest, recipe.output.dir / f"{recipe.artifact_name}.json")]
    previous = [published for _, published in reversed(moves) if published.exists()]
    aside = {p: p.with_name(f".{p.name}.{os.getpid()}.previous.tmp") for p in previous}
    done: list[Path] = []
    try:
        for p in previous:
            os.replace(p, aside[p])
        for ready, published in moves:
            os.replace(ready, published)
            done.append(published)
    except OSError:
        for published in done:
            published.unlink(missing_ok=True)
        for p, backup in aside.items():
            if backup.exists():
                os.replace(backup, p)
        raise
    for backup in aside.values():
        backup.unlink()


def recipe_record(recipe: Recipe, recipe_path: Path) -> dict:
    checkpoint = recipe.model.checkpoint
    return {
        "name": recipe.artifact_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {
            "path": str(recipe_path),
            "sha256": recipe.digest(),
            "file_sha256": sha256_file(recipe_path) if recipe_path.is_file() else None,
            "resolved": recipe.model_dump(mode="json"),
        },
        "source": {
            "model": recipe.model.name,
            "overrides": recipe.model.overrides.model_dump(exclude_none=True),
            "pretrained": recipe.model.pretrained,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        },
    }


def evaluate_onnx(recipe: Recipe, eval_set: ImageSet, fp32: Path, int8: Path | None, bs: int) -> dict[str, float]:
    """Top-1 of each ONNX file on the evaluation images, `bs` per batch."""
    pre = recipe.data.preprocess
    top1: dict[str, float] = {}
    for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        if path is not None:
            top1[key] = onnx_accuracy(open_session(path), eval_set, pre, bs, label=key)
    return top1
