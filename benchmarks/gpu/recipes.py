"""Write the recipes of the GPU run (benchmarks/gpu/run.sh) into one folder.

    python benchmarks/gpu/recipes.py WORK [--dry-run] [--teacher-minutes M]

The shipped recipes, copied with their checkpoints made absolute and their artifacts under
WORK/artifacts (the checkout's artifacts/ is left alone): ViT-B/16 and ViT-S/16 at 224x224
(random weights, GPU fusions), the reference artifacts (vit_fp32, vit_static_int8,
vit_dynamic_int8) and the GPU teacher with a wall-clock cap. `--dry-run` shrinks every model
to a few thousand parameters and the teacher to one epoch, for the CPU rehearsal in the tests.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TINY = {"img_size": 32, "patch_size": 8, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}
REFERENCE = ("vit_fp32", "vit_static_int8", "vit_dynamic_int8")


def shipped(name: str) -> dict:
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    for model in (recipe["model"], *(s["teacher"] for s in recipe.get("stages", []) if "teacher" in s)):
        if model.get("checkpoint"):
            model["checkpoint"] = str((RECIPES / model["checkpoint"]).resolve())
    recipe["output"] = {"dir": "artifacts"}
    return recipe


def speed_recipes() -> dict[str, dict]:
    """ViT-B/16 as shipped for GPU speed, and ViT-S/16 the same way."""
    base = shipped("vit_base_gpu_fp32")
    small = copy.deepcopy(base)
    small["name"], small["model"]["name"] = "vit_small_gpu_fp32", "vit_small_patch16_224"
    small["description"] = base["description"].replace("vit_base_patch16_224", "vit_small_patch16_224")
    return {"vit_base_gpu_fp32": base, "vit_small_gpu_fp32": small}


def teacher_recipe(minutes: float) -> dict:
    teacher = shipped("teacher_vit_cifar10")
    teacher["stages"][0]["max_minutes"] = minutes
    return teacher


def shrink(recipe: dict) -> dict:
    """The same recipe on a model of a few thousand parameters, one short epoch per stage."""
    recipe = copy.deepcopy(recipe)
    recipe["model"].pop("checkpoint", None)
    recipe["model"] = {"name": "vit_tiny_patch16_224", "overrides": TINY}
    for stage in recipe.get("stages", []):
        stage.update({"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "eval_samples": 8})
        stage.pop("max_minutes", None)
    recipe.setdefault("evaluate", {})["samples"] = 16
    recipe.setdefault("export", {})["parity_samples"] = 8
    if recipe.get("quantize", {}).get("calibration"):
        recipe["quantize"]["calibration"]["samples"] = 8
    recipe.get("quantize", {}).pop("max_accuracy_drop", None)  # 16 images of a random model say nothing
    return recipe


def write(work: Path, dry_run: bool, teacher_minutes: float) -> list[Path]:
    recipes = speed_recipes() | {name: shipped(name) for name in REFERENCE}
    recipes["teacher_vit_cifar10"] = teacher_recipe(teacher_minutes)
    work.mkdir(parents=True, exist_ok=True)
    written = []
    for name, recipe in recipes.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(shrink(recipe) if dry_run else recipe, sort_keys=False))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--teacher-minutes", type=float, default=3.0)
    args = parser.parse_args()
    for path in write(args.work, args.dry_run, args.teacher_minutes):
        print(path)


if __name__ == "__main__":
    main()
