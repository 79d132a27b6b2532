"""One rule per decision: the build, tune, sensitivity and bench batch a model the same way,
because each asks `vitdeploy.core.batching` with the same token count, read from the model in
PyTorch or from its ONNX file."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from vitdeploy.core.batching import calibration_batch, evaluation_batch
from vitdeploy.core.contract import INPUT_NAME, InputContract
from vitdeploy.onnx.graph import token_count
from vitdeploy.recipe.schema import ExportSpec
from vitdeploy.torch.export import export_onnx
from vitdeploy.torch.models import num_tokens

from .conftest import tiny_vit


@pytest.mark.parametrize(("patch", "img"), [(8, 32), (16, 64)])
def test_the_onnx_file_and_the_model_give_the_same_token_count(patch: int, img: int, tmp_path: Path) -> None:
    model = tiny_vit(patch_size=patch, img_size=img)
    path = export_onnx(model, ExportSpec(), img, tmp_path / "m.onnx")
    assert token_count(onnx.load(str(path))) == num_tokens(model) == (img // patch) ** 2 + 1


def test_batches_follow_the_tokens_unless_the_recipe_says() -> None:
    # a 224x224 ViT: patch 32 gives 50 tokens (large batches), patch 16 gives 197 (small ones)
    assert (evaluation_batch(50), evaluation_batch(197), evaluation_batch(197, asked=16)) == (64, 8, 16)
    assert (calibration_batch(50), calibration_batch(197), calibration_batch(197, asked=4)) == (32, 1, 4)
    assert evaluation_batch(None) == 64 and calibration_batch(None) == 32  # no position embedding found: small


def test_the_input_name_is_declared_once() -> None:
    from vitdeploy.torch import export

    assert export.INPUT_NAME is INPUT_NAME == InputContract(32, (0, 0, 0), (1, 1, 1)).input_name


def test_quantizing_leaves_the_process_loggers_and_temp_folder_as_they_were(tmp_path: Path) -> None:
    import logging
    import tempfile

    import numpy as np

    from vitdeploy.onnx.quantize import ArrayCalibrationReader, quantize_model
    from vitdeploy.recipe.schema import CalibrationSpec, QuantizeSpec

    path = export_onnx(tiny_vit(), ExportSpec(), 32, tmp_path / "m.onnx")
    root, before_dir = logging.getLogger(), tempfile.tempdir
    root.setLevel(logging.INFO)
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    spec = QuantizeSpec(mode="static", calibration=CalibrationSpec(samples=8))
    quantize_model(path, tmp_path / "q.onnx", spec, ArrayCalibrationReader(INPUT_NAME, images, 4))
    assert root.level == logging.INFO and tempfile.tempdir == before_dir
    assert not list(tmp_path.glob(".quantize-*")), "scratch left behind"


def test_one_rule_says_whether_a_manifest_is_current(tmp_path: Path) -> None:
    import json

    from vitdeploy.delivery.manifests import current_manifest
    from vitdeploy.recipe.schema import parse_recipe

    recipe = parse_recipe({"name": "r", "model": {"name": "vit_tiny_patch16_224"}, "output": {"dir": str(tmp_path)}})
    (tmp_path / "r.onnx").write_bytes(b"abcd")
    manifest = {
        "name": "r", "recipe": {"sha256": recipe.digest()}, "artifacts": {"onnx": {"file": "r.onnx", "sha256": "-", "bytes": 4}},
        "preprocess": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "evaluate": {"top1": {"onnx_fp32": 0.5}},
    }  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(manifest))
    assert current_manifest(recipe).raw == manifest
    assert current_manifest(recipe, lambda m: False) is None  # made by other code or libraries
    changed = parse_recipe({"name": "r", "model": {"name": "vit_tiny_patch16_224"}, "output": {"dir": str(tmp_path)},
                            "evaluate": {"samples": 10}})  # fmt: skip
    assert current_manifest(changed) is None
    (tmp_path / "r.onnx").write_bytes(b"abc")  # a file cut short
    assert current_manifest(recipe) is None


def test_a_manifest_of_an_earlier_release_reads_typed() -> None:
    import json

    from vitdeploy.core.contract import BuildManifest

    old = Path(__file__).resolve().parents[2] / "shared" / "teachers" / "vit_cifar10_cpu_34ep.build.json"
    m = BuildManifest.from_dict(json.loads(old.read_text()), old.name)
    assert m.stages[0].stage == "finetune" and m.file("onnx").endswith(".onnx") and m.artifact_top1 == 0.7785
    assert m.parameters is None and m.dataset == "cifar10" and m.parity_agreement == 1.0  # what it lacks is None
