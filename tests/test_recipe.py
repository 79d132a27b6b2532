"""Recipe validation: bad recipes fail before any work, naming file, field and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitdeploy.core.errors import RecipeError
from vitdeploy.recipe.schema import FinetuneConfig, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))

BASE = {"name": "t", "model": {"name": "vit_tiny_patch16_224"}}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def vitdeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitdeploy.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.output.dir.is_absolute()


def test_paths_resolve_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    recipe = load_recipe(write(tmp_path, BASE | {"model": {"name": "vit_tiny_patch16_224", "checkpoint": "w.safetensors"}}))
    assert recipe.model.checkpoint == tmp_path / "w.safetensors"
    assert recipe.output.dir == tmp_path.parent / "artifacts"


@pytest.mark.parametrize(
    ("patch", "field", "says"),
    [
        ({"modle": {}}, "modle", "allowed: data, description, evaluate"),
        ({"quantize": {"mode": "static", "calibration": {"samples": -5}}}, "quantize.calibration.samples", "greater than 0"),
        ({"quantize": {"mode": "int4"}}, "quantize.mode", "'none', 'dynamic' or 'static'"),
        ({"quantize": {"format": "qdq", "colour": 1}}, "quantize.colour", "allowed: activation_type"),
        ({"export": {"opset": "seventeen"}}, "export.opset", "valid integer"),
        ({"stages": [{"stage": "finetune", "epochs": 0}]}, "stages.0.finetune.epochs", "greater than 0"),
        ({"stages": [{"stage": "sparsify"}]}, "stages.0", "allowed stages: finetune"),
        (
            {"model": {"name": "vit_tiny_patch16_224", "overrides": {"embed_dim": 100, "num_heads": 3}}},
            "model.overrides",
            "divisible",
        ),
        ({"quantize": {"mode": "static", "calibration": {"split": "test"}}}, "(top level)", "distinct from evaluation"),
    ],
)
def test_bad_recipe_names_field_and_allowed(patch: dict, field: str, says: str, tmp_path: Path) -> None:
    path = write(tmp_path, BASE | patch)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    message = str(exc.value)
    assert str(path) in message
    assert field in message and says in message, message


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE | {"model": {"name": "vit_tiny_patch16_224", "checkpoint": "nope.safetensors"}})
    with pytest.raises(RecipeError, match=r"model.checkpoint: file not found: .*nope.safetensors"):
        load_recipe(path)


def test_stage_config_validates_relations() -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        FinetuneConfig(epochs=2, warmup_epochs=5)
    assert parse_recipe(BASE | {"stages": [{"stage": "finetune", "epochs": 3}]}).stages[0].epochs == 3


def test_digest_ignores_layout() -> None:
    a = parse_recipe(BASE | {"quantize": {"mode": "dynamic"}})
    b = parse_recipe({"quantize": {"mode": "dynamic"}, **BASE})
    c = parse_recipe(BASE | {"quantize": {"mode": "static"}})
    assert a.digest() == b.digest() != c.digest()


def test_check_cli_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    ok = vitdeploy("check", str(ROOT / "recipes" / "deit_int8.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout

    bad = vitdeploy("check", str(write(tmp_path, BASE | {"quantize": {"calibration": {"samples": -1}}})))
    assert bad.returncode == 2
    assert "quantize.calibration.samples" in bad.stderr and "Traceback" not in bad.stderr

    resnet = vitdeploy("check", str(write(tmp_path, BASE | {"model": {"name": "resnet18"}})))
    assert resnet.returncode == 2
    assert "not of the VisionTransformer family" in resnet.stderr and "Traceback" not in resnet.stderr

    typo = vitdeploy("check", str(write(tmp_path, BASE | {"model": {"name": "vit_tiny_patch16_244"}})))
    assert typo.returncode == 2 and "did you mean: vit_tiny_patch16_224" in typo.stderr

    missing = vitdeploy("check", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "no such recipe file" in missing.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    res = vitdeploy("check", str(broken))
    assert res.returncode == 2 and "(yaml)" in res.stderr


def test_committed_recipe_reference_matches_the_schema() -> None:
    from vitdeploy.recipe.reference import markdown

    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == markdown(), "regenerate: python -m vitdeploy.recipe.reference > docs/recipe-reference.md"


def test_version_flag() -> None:
    from vitdeploy import __version__

    res = vitdeploy("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"vitdeploy {__version__}"


def test_a_quantize_section_without_mode_is_an_error_not_static_int8(tmp_path: Path) -> None:
    data = {"name": "q", "model": {"name": "vit_tiny_patch16_224"}, "quantize": {"per_channel": False}}
    with pytest.raises(RecipeError, match=r"quantize.mode: required field is missing"):
        parse_recipe(data)
    assert parse_recipe({"name": "q", "model": {"name": "vit_tiny_patch16_224"}}).quantize.mode == "none"


def test_the_shipped_name_lists_match_the_installed_timm_and_onnx_runtime() -> None:
    """`check` answers from the lists; regenerate them with `python -m vitdeploy.pipeline.known_names`."""
    import json

    from vitdeploy.pipeline.known_names import current_names
    from vitdeploy.recipe.known_names import LIST_FILE

    shipped = json.loads(LIST_FILE.read_text())
    current = current_names()
    assert shipped["vit_models"] == current["vit_models"]
    assert shipped["quantizable_op_types"] == current["quantizable_op_types"]


def test_check_imports_neither_torch_nor_the_quantizer(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "vit_static_int8.yaml"
    code = (
        "import sys\nfrom vitdeploy.cli import main\n"
        f"sys.argv = ['vitdeploy', 'check', {str(recipe)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "loaded = [m for m in ('torch', 'timm', 'onnxruntime.quantization') if m in sys.modules]\n"
        "assert not loaded, loaded\nprint('LIGHT')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "LIGHT" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "valid" in done.stdout
