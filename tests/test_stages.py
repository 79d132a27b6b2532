"""The stage machinery: registry, cache keys, per-position reports, several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from vitdeploy.pipeline.build import run_stages, stage_key
from vitdeploy.recipe.schema import STAGE_CONFIGS, parse_recipe
from vitdeploy.torch.models import save_weights
from vitdeploy.torch.stages import STAGES
from vitdeploy.torch.stages.base import stage_name

from .conftest import ROOT, TINY_OVERRIDES, tiny_vit


def test_every_schema_stage_has_an_implementation_and_back() -> None:
    assert {stage_name(c) for c in STAGE_CONFIGS} == set(STAGES)


def recipe_dict(tmp_path: Path, stages: list[dict], **model) -> dict:
    return {
        "name": "s",
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES} | model,
        "stages": stages,
        "output": {"dir": str(tmp_path)},
    }


def test_cache_key_covers_files_data_and_configs(cifar10: Path, tmp_path: Path) -> None:
    teacher = tiny_vit()
    torch.nn.init.ones_(teacher.head.bias)
    save_weights(teacher, tmp_path / "t.safetensors")
    distill = {"stage": "distill", "teacher": {"name": "vit_tiny_patch16_224", "checkpoint": str(tmp_path / "t.safetensors")}}
    base = recipe_dict(tmp_path, [{"stage": "nystrom", "landmarks": 4}, distill])
    key = stage_key(parse_recipe(base), 1)
    assert stage_key(parse_recipe(base), 0) != key
    other_pre = json.loads(json.dumps(base))
    other_pre["data"] = {"preprocess": {"interpolation": "bilinear"}}
    assert stage_key(parse_recipe(other_pre), 1) != key
    other_cfg = json.loads(json.dumps(base))
    other_cfg["stages"][0]["landmarks"] = 5
    assert stage_key(parse_recipe(other_cfg), 1) != key
    other_teacher = tiny_vit()
    torch.nn.init.zeros_(other_teacher.head.bias)
    save_weights(other_teacher, tmp_path / "t.safetensors")  # same name, other teacher weights
    assert stage_key(parse_recipe(base), 1) != key
    assert stage_key(parse_recipe(base), 0) == stage_key(parse_recipe(base), 0)


def test_repeated_stages_keep_one_report_each_and_reload_from_cache(cifar10: Path, tmp_path: Path) -> None:
    prune = {"stage": "prune", "head_ratio": 0.34, "samples": 32, "importance": "l1"}
    finetune = {"stage": "finetune", "epochs": 1, "train_samples": 128, "eval_samples": 50, "warmup_epochs": 0}
    recipe = parse_recipe(recipe_dict(tmp_path, [prune, finetune, prune | {"head_ratio": 0.5}]))
    model, reports = run_stages(recipe, torch.device("cpu"))
    assert [r["stage"] for r in reports] == ["prune", "finetune", "prune"] and not any(r["cached"] for r in reports)
    assert reports[0]["report"]["after"]["architecture"]["heads"] == [2, 2]
    assert reports[2]["report"]["after"]["architecture"]["heads"] == [1, 1]
    again, cached = run_stages(recipe, torch.device("cpu"))
    assert all(r["cached"] for r in cached) and [r["report"] for r in cached] == [r["report"] for r in reports]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x))


DDP_SCRIPT = """
import json, sys, torch
from vitdeploy.recipe.schema import parse_recipe
from vitdeploy.pipeline.build import run_stages
recipe = parse_recipe(json.loads(sys.argv[1]))
model, _ = run_stages(recipe, torch.device("cpu"))
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    torch.save({k: v for k, v in model.state_dict().items()}, sys.argv[2])
"""


def test_two_gloo_processes_train_like_one(cifar10: Path, tmp_path: Path) -> None:
    finetune = {"stage": "finetune", "epochs": 1, "batch_size": 32, "train_samples": 256, "eval_samples": 32,
                "warmup_epochs": 0, "augment": "flip_crop", "grad_clip": None, "num_threads": 1}  # fmt: skip
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    results = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}"
        recipe = json.dumps(recipe_dict(out, [finetune]))
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(procs),
            "--master-port",
            str(29500 + procs),
        ]
        cmd = [*launcher, str(script)] if procs > 1 else [sys.executable, str(script)]
        res = subprocess.run([*cmd, recipe, str(tmp_path / f"w{procs}.pt")], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        results[procs] = torch.load(tmp_path / f"w{procs}.pt", weights_only=True)
    start = tiny_vit().state_dict()
    moved = max((results[1][k] - start[k]).abs().max().item() for k in start if k in results[1])
    diff = max((results[1][k] - results[2][k]).abs().max().item() for k in results[1])
    assert moved > 1e-3  # training changed the weights ...
    assert diff < 1e-4  # ... and two processes changed them as one did


def test_options_added_later_change_the_key_only_when_set(cifar10: Path, tmp_path: Path) -> None:
    prune = {"stage": "prune", "ratio": 0.2}
    plain = parse_recipe(recipe_dict(tmp_path, [prune]))
    assert "remove_blocks" not in plain.stages[0].cache_json()
    at_default = parse_recipe(recipe_dict(tmp_path, [prune | {"remove_blocks": 0}]))
    assert stage_key(at_default, 0) == stage_key(plain, 0)
    assert stage_key(parse_recipe(recipe_dict(tmp_path, [prune | {"remove_blocks": 1}])), 0) != stage_key(plain, 0)


def test_a_time_budget_shrinks_the_run_and_its_schedule_to_fit(cifar10: Path, tmp_path: Path) -> None:
    finetune = {"stage": "finetune", "epochs": 40, "train_samples": 64, "batch_size": 16, "eval_samples": 20,
                "warmup_epochs": 2, "lr": 1e-3, "min_lr": 1e-5}  # fmt: skip
    # A budget far below one epoch: the epoch that ran is all that fits.
    recipe = parse_recipe(recipe_dict(tmp_path, [finetune | {"max_minutes": 1e-6}]))
    _, reports = run_stages(recipe, torch.device("cpu"))
    report = reports[0]["report"]
    assert report["epochs_run"] == 1 and report["max_minutes"] == 1e-6 and len(report["epochs"]) == 1
    # the saved schedule shrank with it (4 steps an epoch): a resumed run keeps the plan
    (state_file,) = tmp_path.rglob("last.pt")
    state = torch.load(state_file, weights_only=True)
    assert all(group == {"total": 4, "warmup": 0, "floor": 0.01} for group in state["scheduler"]["lr_lambdas"])
    assert json.loads(state["progress"])["planned_epochs"] == 1
    # at its default the option leaves the key alone; set, it changes it
    plain = parse_recipe(recipe_dict(tmp_path, [finetune]))
    assert "max_minutes" not in plain.stages[0].cache_json() and stage_key(plain, 0) != stage_key(recipe, 0)


def test_a_shrunk_schedule_ends_where_the_shorter_run_does() -> None:
    from vitdeploy.torch.stages.loop import WarmupCosine

    schedule = WarmupCosine(total=40 * 4, warmup=2 * 4, floor=0.01)
    schedule.shrink(3 / 40)  # three of forty epochs fit
    assert (schedule.total, schedule.warmup) == (12, 1)
    assert schedule(0) == 1.0 and schedule(6) < 0.6 and schedule(11) < 0.05 and schedule(12) == 0.01


def test_epochs_within_a_budget() -> None:
    from vitdeploy.torch.stages.loop import epochs_within

    assert epochs_within(600, 59, 200) == 10 and epochs_within(600, 1, 200) == 200 and epochs_within(1, 60, 200) == 1


def test_a_recipe_reuses_the_stages_another_recipe_finished_with_the_same_key(cifar10: Path, tmp_path: Path) -> None:
    prune = {"stage": "prune", "head_ratio": 0.34, "samples": 32, "importance": "l1"}
    finetune = {"stage": "finetune", "epochs": 1, "train_samples": 64, "eval_samples": 32, "warmup_epochs": 0}
    first = parse_recipe(recipe_dict(tmp_path, [prune, finetune]))
    model, _ = run_stages(first, torch.device("cpu"))
    # the same model and stages, quantized otherwise: another artifact, the same stage outputs
    second = parse_recipe(recipe_dict(tmp_path, [prune, finetune]) | {"name": "other", "quantize": {"mode": "dynamic"}})
    again, reports = run_stages(second, torch.device("cpu"))
    assert all(r["cached"] for r in reports)
    torch.testing.assert_close(again(torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32)))
    # another stage setting is another key: trained, not taken from the sibling
    third = parse_recipe(recipe_dict(tmp_path, [prune | {"head_ratio": 0.5}]) | {"name": "third"})
    _, reports = run_stages(third, torch.device("cpu"))
    assert not any(r["cached"] for r in reports)
