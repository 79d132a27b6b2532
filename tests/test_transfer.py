"""Your own model, your own images: the reference teacher (10 classes, 32x32) fine-tuned with a
new head on a 3-class folder of photos of mixed sizes and modes, built, packaged and run."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app

from .conftest import CIFAR_ARCHIVE, TEACHER

runner = CliRunner()
CLASSES = ("airplane", "frog", "truck")


def own_photos(root: Path, train: int, test: int) -> Path:
    """CIFAR-10 images of three classes, saved as a user's folder would hold them: JPEGs, PNGs
    with alpha, greyscale, at 32x32, 48x40 and 64x64."""
    wanted = {("train", c): train for c in CLASSES} | {("test", c): test for c in CLASSES}
    with tarfile.open(CIFAR_ARCHIVE) as tf:
        for member in tf:
            parts = Path(member.name).parts
            key = (parts[-3], parts[-2]) if len(parts) >= 4 else None
            if not member.isfile() or wanted.get(key, 0) <= 0:
                continue
            wanted[key] -= 1
            image = Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB")
            folder = root / key[0] / key[1]
            folder.mkdir(parents=True, exist_ok=True)
            n = wanted[key]
            if n % 3 == 0:
                image.resize((48, 40)).save(folder / f"{n}.jpg")
            elif n % 3 == 1:
                image.resize((64, 64)).convert("RGBA").save(folder / f"{n}.png")
            else:
                image.convert("L").save(folder / f"{n}.jpg")
            if not any(wanted.values()):
                break
    return root


@pytest.mark.slow
def test_the_teacher_fine_tuned_with_a_new_head_builds_packages_and_predicts_above_chance(tmp_path: Path) -> None:
    photos = own_photos(tmp_path / "photos", train=150, test=40)
    recipe = {
        "name": "transfer3",
        "model": {"name": "vit_tiny_patch16_224", "checkpoint": str(TEACHER), "reset_head": True,
                  "overrides": {}},  # the new head has as many classes as the folder
        "data": {"dataset": "photos", "source": str(photos), "cache_dir": str(tmp_path / "cache")},
        "stages": [{"stage": "finetune", "epochs": 4, "batch_size": 32, "lr": 5e-4, "warmup_epochs": 0}],
        "export": {"parity_samples": 32},
        "quantize": {"mode": "dynamic"},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    path = tmp_path / "transfer3.yaml"
    path.write_text(json.dumps(recipe))
    done = runner.invoke(app, ["build", str(path), "--device", "cpu"])
    assert done.exit_code == 0, done.output[-3000:]

    manifest = json.loads((tmp_path / "out" / "transfer3.json").read_text())
    assert manifest["model"]["transfer"]["reset"] == ["head"]
    assert manifest["model"]["transfer"]["from"]["num_classes"] == 10 and manifest["model"]["transfer"]["to"]["num_classes"] == 3
    assert manifest["preprocess"]["classes"] == list(CLASSES) and manifest["preprocess"]["img_size"] == 32
    assert manifest["evaluate"]["top1"]["onnx_int8"] > 0.6  # chance: 1/3

    bundle = tmp_path / "transfer3.tar.gz"
    done = runner.invoke(app, ["package", str(tmp_path / "out" / "transfer3.onnx"), "--out", str(bundle), "--bench", "none"])
    assert done.exit_code == 0, done.output[-2000:]
    done = runner.invoke(app, ["predict", str(bundle), str(photos / "test"), "--json"])
    assert done.exit_code == 0, done.output[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 * 40 and all(r["top"][0]["label"] in CLASSES for r in rows)
    correct = sum(r["top"][0]["label"] == r["folder_label"] for r in rows)
    assert correct / len(rows) > 0.6
