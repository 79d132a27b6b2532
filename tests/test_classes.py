"""A model whose head does not match the dataset's classes is refused before any work, and a
build never publishes outputs its labels cannot name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app

from .conftest import TEACHER

runner = CliRunner()


def three_class_folder(root: Path, sizes: tuple[tuple[int, int], ...] = ((32, 32),)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        for cls in ("cat", "dog", "fox"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")
    return root


def recipe(tmp_path: Path, model: dict, source: Path) -> Path:
    path = tmp_path / "mine.yaml"
    data = {"dataset": "pets", "source": str(source), "cache_dir": str(tmp_path / "cache")}
    spec = {"name": "mine", "model": model, "data": data, "export": {"parity_samples": 8}, "evaluate": {"torch": False},
            "output": {"dir": str(tmp_path / "out")}}  # fmt: skip
    path.write_text(json.dumps(spec))
    return path


def test_check_and_build_refuse_a_ten_class_checkpoint_on_a_three_class_folder(tmp_path: Path) -> None:
    source = three_class_folder(tmp_path / "pets", sizes=((32, 32), (64, 48)))
    path = recipe(tmp_path, {"name": "vit_tiny_patch16_224", "checkpoint": str(TEACHER)}, source)
    for command in ("check", "build"):
        done = runner.invoke(app, [command, str(path)])
        assert done.exit_code == 2, done.output
        assert "10 outputs" in done.output and "3 classes (cat, dog, fox)" in done.output
        assert "num_classes: 3" in done.output
    assert not (tmp_path / "out").exists()  # nothing trained, exported or published


def test_a_head_known_only_after_building_the_model_is_still_checked_before_export(tmp_path: Path) -> None:
    source = three_class_folder(tmp_path / "pets")
    model = {
        "name": "vit_tiny_patch16_224",
        "overrides": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3},
    }
    path = recipe(tmp_path, model, source)  # no num_classes: timm's default head of 1000
    assert runner.invoke(app, ["check", str(path)]).exit_code == 0
    done = runner.invoke(app, ["build", str(path)])
    assert done.exit_code != 0 and "1000 outputs" in done.output and "3 classes" in done.output
    assert not list((tmp_path / "out").glob("*.onnx"))
    assert not list((tmp_path / "out").glob("*.json"))


def test_a_new_class_count_on_a_checkpoint_asks_for_reset_head_and_reset_head_passes_check(tmp_path: Path) -> None:
    source = three_class_folder(tmp_path / "pets")
    model = {"name": "vit_tiny_patch16_224", "checkpoint": str(TEACHER), "overrides": {"num_classes": 3}}
    done = runner.invoke(app, ["check", str(recipe(tmp_path, model, source))])
    assert done.exit_code == 2 and "has a 10-class head; set model.reset_head: true" in done.output
    for overrides in ({"num_classes": 3}, {}):  # the head's size given, or taken from the folder
        transfer = {"name": "vit_tiny_patch16_224", "checkpoint": str(TEACHER), "reset_head": True, "overrides": overrides}
        done = runner.invoke(app, ["check", str(recipe(tmp_path, transfer, source))])
        assert done.exit_code == 0, done.output


def test_a_single_folder_of_class_folders_is_checked_against_the_head(tmp_path: Path) -> None:
    """`check` refuses a head that does not match a folder without split folders, before decoding."""
    from PIL import Image

    from vitdeploy.core.errors import UserError
    from vitdeploy.data.classes import check_head_matches, dataset_classes
    from vitdeploy.recipe.schema import parse_recipe

    for cls in ("apple", "leaf", "sky"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        Image.new("RGB", (20, 30)).save(tmp_path / "photos" / cls / "a.png")
    model = {"name": "vit_tiny_patch16_224", "overrides": {"num_classes": 10}}
    data = {"dataset": "photos", "source": str(tmp_path / "photos")}
    recipe = parse_recipe({"name": "m", "model": model, "data": data, "output": {"dir": str(tmp_path / "out")}})
    assert dataset_classes(recipe.data) == ("apple", "leaf", "sky")
    with pytest.raises(UserError, match="the model has 10 outputs but dataset 'photos' has 3 classes"):
        check_head_matches(recipe)
