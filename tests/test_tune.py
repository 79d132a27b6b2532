"""`vitdeploy tune`: held-out validation images, the choice rules, and a whole search run twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import VALIDATION, ImageSet, load_split
from vitdeploy.recipe.schema import DataSpec, QuantizeSpec, load_recipe
from vitdeploy.tune.record import Speed, Tried
from vitdeploy.tune.search import TuneSettings, Validation, choose
from vitdeploy.tune.space import Candidate, candidates, student_candidates

from .conftest import TINY_OVERRIDES

runner = CliRunner()


def test_held_out_images_are_disjoint_from_training_and_always_the_same(cifar10: Path) -> None:
    spec = DataSpec(dataset="cifar10", cache_dir=cifar10, holdout=300)
    full = load_split(DataSpec(dataset="cifar10", cache_dir=cifar10), "train")
    train, held = load_split(spec, "train"), load_split(spec, VALIDATION)
    assert len(train) + len(held) == len(full) and len(held) == 300
    fingerprints = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in fingerprints for im in held.images)  # CIFAR-10 has no duplicate across these
    assert np.array_equal(load_split(spec, VALIDATION).images, held.images)


def test_images_held_out_from_the_test_split_leave_training_whole_and_are_never_reported(cifar10: Path) -> None:
    whole = DataSpec(dataset="cifar10", cache_dir=cifar10)
    spec = DataSpec(dataset="cifar10", cache_dir=cifar10, holdout=200, holdout_from="test")
    test, held = load_split(spec, "test"), load_split(spec, VALIDATION)
    assert len(test) + len(held) == len(load_split(whole, "test")) and len(held) == 200
    assert not {im.tobytes() for im in test.images} & {im.tobytes() for im in held.images}
    assert np.array_equal(load_split(spec, "train").labels, load_split(whole, "train").labels)  # training reads every image
    with pytest.raises(ValueError, match="holdout_from without holdout"):
        DataSpec(holdout_from="test")


def test_a_model_trained_for_tune_serves_the_tuned_build_unless_it_learnt_from_fewer_images(cifar10: Path) -> None:
    from vitdeploy.pipeline.build import stage_keys
    from vitdeploy.recipe.schema import Recipe

    def keys(**data: object) -> list[str]:
        stages = [{"stage": "finetune", "epochs": 1}]
        spec = {"name": "r", "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES}, "stages": stages}
        return stage_keys(Recipe.model_validate(spec | {"data": {"cache_dir": str(cifar10), **data}}))

    reported = keys(holdout=100, holdout_from="test")
    assert keys(holdout=100, holdout_from="test", eval_split=VALIDATION) == reported == keys()  # same training images
    assert keys(holdout=100, eval_split=VALIDATION) == keys(holdout=100) != reported  # 100 fewer training images


def test_holding_out_every_image_is_refused() -> None:
    images = ImageSet(np.zeros((4, 2, 2, 3), np.uint8), np.arange(4), ("a", "b", "c", "d"))
    rest, held = images.hold_out(1, seed=0)
    assert len(rest) == 3 and len(held) == 1
    with pytest.raises(Exception, match="must leave images in the train split"):
        images.hold_out(4, seed=0)


def test_every_candidate_is_a_valid_quantize_section_keeping_the_recipe_s_own_choices() -> None:
    from vitdeploy.recipe.schema import ModelSpec, Recipe

    recipe = Recipe(
        name="r", model=ModelSpec(name="vit_tiny_patch16_224"),
        quantize=QuantizeSpec(mode="static", op_types=["MatMul"], keep_classifier_fp32=False, max_accuracy_drop=1.0),
    )  # fmt: skip
    space = candidates(recipe)
    assert space[0].is_float and {c.quantize["mode"] for c in space} == {"none", "dynamic", "static"}
    for c in space[1:]:
        spec = QuantizeSpec(**c.quantize)
        fused_attention = ["Attention"] if spec.mode == "dynamic" else []  # dynamic INT8 runs it as QAttention
        assert spec.op_types == ["MatMul", *fused_attention] and not spec.keep_classifier_fp32 and spec.max_accuracy_drop is None
    assert any(QuantizeSpec(**c.quantize).smooth_alpha for c in space)
    assert [c.name for c in space if QuantizeSpec(**c.quantize).attention == "int8"] == ["static-attention-int8"]
    fused = recipe.model_copy(update={"optimize": recipe.optimize.model_copy(update={"fuse_attention": True})})
    assert not any(QuantizeSpec(**c.quantize).attention != "float" for c in candidates(fused))  # nothing to quantize


def tried(name: str, drop: float, *speedups: float) -> Tried:
    mode = "none" if name == "fp32" else "static"
    t = Tried(Candidate(name, name, {"mode": mode}), name, top1=80.0 - drop, drop=drop)
    t.speeds = [Speed("cpu", b, s, s, s, 100.0, "now") for b, s in zip((1, 16), speedups, strict=False)]
    return t


SETTINGS = TuneSettings(max_drop=0.5, batches=(1, 16))


def test_over_budget_or_slower_than_fp32_is_never_chosen() -> None:
    fp32 = tried("fp32", 0.0)
    fast_but_lossy, slow_at_b1, good = tried("a", 0.8, 3.0, 3.0), tried("b", 0.1, 0.95, 2.5), tried("c", 0.4, 1.3, 1.6)
    assert choose([fp32, fast_but_lossy, slow_at_b1, good], fp32, SETTINGS) is good
    assert fast_but_lossy.verdict.startswith("over budget") and slow_at_b1.verdict.startswith("slower than FP32 at cpu b1")


def test_a_cell_level_with_fp32_within_noise_does_not_exclude_a_candidate_faster_overall() -> None:
    fp32 = tried("fp32", 0.0)
    level_at_b1, level_everywhere = tried("a", 0.1, 0.99, 1.4), tried("b", 0.0, 0.99, 1.0)
    assert choose([fp32, level_at_b1, level_everywhere], fp32, SETTINGS) is level_at_b1
    assert level_everywhere.verdict.startswith("no faster than FP32")


def test_fp32_is_chosen_when_no_int8_candidate_pays_here() -> None:
    fp32 = tried("fp32", 0.0)
    slow_at_b1, lossy, level = tried("a", 0.1, 0.95, 1.4), tried("b", 0.9, 2.0, 2.0), tried("c", 0.1, 0.98, 1.01)
    assert choose([fp32, slow_at_b1, lossy, level], fp32, SETTINGS) is fp32
    assert "no INT8 candidate" in fp32.verdict


def test_among_equally_fast_candidates_the_most_accurate_wins() -> None:
    fp32 = tried("fp32", 0.0)
    fastest, nearly, slower = tried("a", 0.4, 1.50, 1.80), tried("b", 0.1, 1.48, 1.78), tried("c", 0.0, 1.2, 1.3)
    assert choose([fp32, fastest, nearly, slower], fp32, SETTINGS) is nearly
    assert "(as fast as the fastest)" in fastest.verdict and "(as fast" not in slower.verdict


def test_tune_chooses_writes_a_recipe_that_rebuilds_the_winner_and_reuses_its_work(cifar10: Path, tmp_path: Path) -> None:
    recipe = {
        "name": "tiny",
        "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES},
        "data": {"dataset": "cifar10", "cache_dir": str(cifar10)},
        "export": {"parity_samples": 32, "min_top1_agreement": 0.9},
        "evaluate": {"samples": 200},
        "quantize": {"mode": "static", "calibration": {"samples": 32}},
        "output": {"dir": str(tmp_path / "out")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = ["tune", str(path), "--max-drop", "5", "--batch", "4", "--holdout", "100", "--rounds", "1", "--duration", "0.2",
            "--runoff-seconds", "4"]  # fmt: skip
    start = time.perf_counter()
    done = runner.invoke(app, [*args, "--device", "cpu"])
    first = time.perf_counter() - start
    assert done.exit_code == 0, done.output[-3000:]

    report = json.loads((tmp_path / "out" / ".tune" / "tiny" / "tune.json").read_text())
    assert report["validation_images"] == 100 and len(report["candidates"]) == len(candidates(load_recipe(path)))
    by_name = {c["name"]: c for c in report["candidates"]}
    winner = by_name[report["winner"]]
    assert winner["verdict"].startswith("chosen")
    if report["winner"] != "fp32":
        assert winner["drop"] <= 5 and all(s["speedup"] >= 0.97 for s in winner["speed"])
    for c in report["candidates"][1:]:  # every candidate timed, within budget or not: the picture shows them all
        assert [s["batch"] for s in c["speed"]] == [4] and c["speedup_geomean"] > 0
        if c["drop"] > 5:
            assert c["verdict"].startswith("over budget")
    assert Path(report["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for c in report["candidates"][1:]:  # every loss with its paired interval on the 100 images
        interval = c["drop_interval"]
        assert interval["images"] == 100 and interval["lowest"] <= c["drop"] <= interval["highest"]
    finalists = [c for c in report["candidates"] if c["runoff"]]
    if report["runoff"]:  # the leaders timed against each other, each with its speed against the leader
        assert report["runoff"]["seconds"] <= 4 + 30 and winner["runoff"]["outcome"].startswith(("winner", "fastest"))
        assert all(c["runoff"]["speed"] for c in finalists if c["name"] != report["runoff"]["leader"])
    assert "run-off" in done.output and "drop" in done.output

    tuned = load_recipe(tmp_path / "tiny.tuned.yaml")  # a plain recipe, scored on the test split again
    assert tuned.name == "tiny.tuned" and tuned.data.eval_split == "test" and tuned.data.holdout is None
    assert tuned.quantize == QuantizeSpec(**winner["quantize"])
    built = json.loads((tmp_path / "out" / "tiny.tuned.json").read_text())
    assert built["recipe"]["sha256"] == tuned.digest() and report["test"]["artifact"].endswith("tiny.tuned.onnx")
    from vitdeploy.tune.search import top1_on_test_images

    # what a student's drop is measured against: the tuned model's FP32 file on the same test images
    fp32_file = Path(by_name["fp32"]["artifact"])
    assert abs(top1_on_test_images(tuned, fp32_file, "onnxruntime") - built["evaluate"]["top1"]["onnx_fp32"]) <= 0.01

    start = time.perf_counter()
    again = runner.invoke(app, [*args, "--max-drop", "10", "--device", "cpu"])  # another budget
    assert again.exit_code == 0, again.output[-3000:]
    assert time.perf_counter() - start < first / 2  # every candidate and its timing reused
    assert again.output.count("reusing the earlier build") >= len(report["candidates"])

    from vitdeploy.tune.search import reuse_manifest

    manifest_path = tmp_path / "out" / "tiny.tuned.json"
    assert reuse_manifest(tuned) is not None
    made_elsewhere = json.loads(manifest_path.read_text())
    made_elsewhere["environment"]["vitdeploy_source"] = "other code"
    manifest_path.write_text(json.dumps(made_elsewhere))
    assert reuse_manifest(tuned) is None  # built by other code: built again


def test_an_openvino_target_keeps_candidates_portable_and_scores_them_there(tmp_path: Path) -> None:
    from vitdeploy.recipe.schema import ModelSpec, Recipe
    from vitdeploy.tune.search import candidate_recipe, scoring_runtime

    recipe = Recipe(name="r", model=ModelSpec(name="vit_tiny_patch16_224"), output={"dir": tmp_path})
    static = candidates(recipe)[2]
    assert candidate_recipe(recipe, static, Validation(100)).runtimes == ["onnxruntime"]
    portable = candidate_recipe(recipe, static, Validation(100), ("cpu", "openvino"))
    assert portable.runtimes == ["onnxruntime", "openvino"] and scoring_runtime(("cpu", "openvino")) == "openvino"
    assert portable.data.eval_split == VALIDATION and portable.data.holdout == 100 and not portable.evaluate.torch
    by_nncf = candidates(recipe, nncf=True)[-1]
    assert by_nncf.name == "nncf" and "nncf" not in {c.name for c in candidates(recipe)}
    assert candidate_recipe(recipe, by_nncf, Validation(100), ("openvino",)).quantize.backend == "nncf"


def test_nncf_over_budget_gets_accuracy_control_with_the_budget_its_own_model_leaves() -> None:
    from vitdeploy.tune.search import accuracy_controlled

    def nncf(name: str, top1: float, source: Path | None = None) -> Tried:
        return Tried(Candidate(name, name, {"mode": "static", "backend": "nncf"}, source=source), name, top1)

    def float_student(name: str, top1: float, source: Path) -> Tried:
        return Tried(Candidate(name, name, {"mode": "none"}, source=source), name, top1)

    close, far = Path("close.yaml"), Path("far.yaml")
    found = accuracy_controlled([
        tried("fp32", 0.0), nncf("nncf", 79.0),  # 1.0 over the teacher's FP32 (80.0): the whole budget, 0.5
        float_student("close.fp32", 79.8, close), nncf("close.nncf", 79.0, close),  # 0.2 spent in float: 0.3 left
        float_student("far.fp32", 79.4, far), nncf("far.nncf", 79.0, far),  # 0.6 spent: nothing left
        nncf("within", 79.6),
    ], SETTINGS, Validation(100))  # fmt: skip
    budgets = {c.name: c.quantize["nncf_max_drop"] for c in found}
    assert budgets == {"nncf-accuracy-control": 0.5, "close.nncf-accuracy-control": 0.3}
    assert next(c for c in found if c.source == close).quantize["backend"] == "nncf"
    assert accuracy_controlled([tried("fp32", 0.0), nncf("nncf", 79.0)], SETTINGS, Validation(100, "val")) == []


def test_a_pruned_student_in_float_can_win_when_it_is_faster_within_budget() -> None:
    fp32 = tried("fp32", 0.0)
    student = Tried(Candidate("pruned.fp32", "pruned", {"mode": "none"}, source=Path("pruned.yaml")), "pruned.fp32", 79.8, 0.2)
    student.speeds = [Speed("cpu", 1, 1.3, 1.3, 1.3, 100.0, "now"), Speed("cpu", 16, 1.2, 1.2, 1.2, 100.0, "now")]
    assert choose([fp32, student, tried("a", 0.1, 1.0, 1.1)], fp32, SETTINGS) is student


def test_a_student_candidate_keeps_its_stages_and_reads_the_tuned_recipe_s_images(tmp_path: Path) -> None:
    from vitdeploy.tune.search import candidate_recipe

    base = {"model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES}, "output": {"dir": str(tmp_path)}}
    main = tmp_path / "main.yaml"
    main.write_text(yaml.safe_dump(base | {"name": "main"}))
    pruned = tmp_path / "pruned.yaml"
    pruned.write_text(yaml.safe_dump(base | {"name": "pruned", "stages": [{"stage": "prune", "ratio": 0.1}]}))
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump(base | {"name": "elsewhere", "data": {"dataset": "photos", "source": str(tmp_path)}}))
    recipe = load_recipe(main)
    c = next(c for c in student_candidates(load_recipe(pruned), pruned) if c.name == "pruned.static")
    r = candidate_recipe(recipe, c, Validation(100))
    assert r.name == "main.pruned.static" and [s.stage for s in r.stages] == ["prune"]
    assert r.data.holdout == 100 and r.data.eval_split == VALIDATION and r.quantize.mode == "static"
    with pytest.raises(Exception, match="same held-out images"):
        candidate_recipe(recipe, next(iter(student_candidates(load_recipe(elsewhere), elsewhere))), Validation(100))


def test_a_dataset_s_own_validation_split_scores_candidates_instead_of_training_images(tmp_path: Path) -> None:
    from PIL import Image

    from vitdeploy.tune.search import candidate_recipe, validation_images

    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        for cls in ("a", "b"):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), (200 * (cls == "a"), 80, i)).save(tmp_path / "photos" / split / cls / f"{i}.png")
    base = {"name": "own", "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES | {"num_classes": 2}},
            "data": {"dataset": "photos", "source": str(tmp_path / "photos"), "cache_dir": str(tmp_path / "c")},
            "output": {"dir": str(tmp_path / "out")}}  # fmt: skip
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(base))
    recipe = load_recipe(tmp_path / "own.yaml")
    validation = validation_images(recipe, TuneSettings(max_drop=0.5, validation_split="val"))
    assert validation == Validation(6, "val")
    r = candidate_recipe(recipe, candidates(recipe)[0], validation)
    assert r.data.eval_split == "val" and r.data.holdout is None
    assert validation_images(recipe, TuneSettings(max_drop=0.5, holdout=5)) == Validation(2)  # a fifth of 12
    with pytest.raises(UserError, match="--validation test: candidates are scored on a split of their own"):
        validation_images(recipe, TuneSettings(max_drop=0.5, validation_split="test"))


def test_validation_images_held_out_from_the_test_split_are_never_in_the_reported_score(cifar10: Path, tmp_path: Path) -> None:
    from vitdeploy.tune.record import Tried
    from vitdeploy.tune.search import candidate_recipe, validation_images, write_tuned_recipe

    base = {"name": "all_train", "model": {"name": "vit_tiny_patch16_224", "overrides": TINY_OVERRIDES},
            "data": {"dataset": "cifar10", "cache_dir": str(cifar10)}, "output": {"dir": str(tmp_path / "out")}}  # fmt: skip
    (tmp_path / "all_train.yaml").write_text(yaml.safe_dump(base))
    recipe = load_recipe(tmp_path / "all_train.yaml")
    test_images = len(load_split(recipe.data, "test"))
    validation = validation_images(recipe, TuneSettings(max_drop=0.5, holdout=10**6, holdout_from="test"))
    assert validation == Validation(test_images // 2, source="test")  # at most half: the rest is reported
    scored = candidate_recipe(recipe, candidates(recipe)[1], validation)
    assert (scored.data.eval_split, scored.data.holdout_source) == (VALIDATION, "test")
    assert len(load_split(scored.data, scored.data.train_split)) == len(load_split(recipe.data, "train"))
    winner = Tried(candidates(recipe)[1], "all_train.dynamic", 80.0, 0.1)
    tuned = load_recipe(write_tuned_recipe(recipe, tmp_path / "all_train.yaml", winner, validation, ("cpu",)))
    assert tuned.data.eval_split == "test" and (tuned.data.holdout, tuned.data.holdout_from) == (validation.images, "test")
    reported, held = load_split(tuned.data, "test"), load_split(scored.data, VALIDATION)
    assert len(reported) + len(held) == test_images
    with pytest.raises(UserError, match="give one"):
        validation_images(recipe, TuneSettings(max_drop=0.5, holdout_from="test", validation_split="val"))
