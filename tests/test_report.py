"""vitdeploy report: rows, deltas against both baselines, well-formed HTML and PNG files."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vitdeploy.delivery.report import PAPER, method_of, pareto, run

from .conftest import TEACHER


def BUILD(recipe, path: Path) -> dict:
    import torch

    from vitdeploy.pipeline.build import build

    return build(recipe, path, torch.device("cpu"))


TEACHER_MODEL = {
    "name": "vit_tiny_patch16_224",
    "overrides": {
        "img_size": 32,
        "patch_size": 4,
        "num_classes": 10,
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 3,
        "mlp_ratio": 2,
    },
    "checkpoint": str(TEACHER),
}


def write_recipe(tmp_path: Path, name: str, quantize: dict) -> Path:
    recipe = {"name": name, "model": TEACHER_MODEL, "quantize": quantize, "evaluate": {"samples": 300, "torch": False},
              "export": {"parity_samples": 64}, "output": {"dir": str(tmp_path / "artifacts")}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


class Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows = 0
        self.images = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag not in ("meta", "img", "br"):
            self.stack.append(tag)
        self.rows += tag == "tr"
        self.images += tag == "img" and dict(attrs)["src"].startswith("data:image/png;base64,")

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_report_from_two_artifacts(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    base = write_recipe(tmp_path, "base", {"mode": "none"})
    dyn = write_recipe(tmp_path, "dyn", {"mode": "dynamic"})
    files = run([base, dyn], tmp_path / "report", BUILD, 2, 0.2, 1, None)
    data = json.loads(files["json"].read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"base", "dyn"} and data["baseline"] == "base"
    assert rows["base"]["delta_pt"] == 0
    assert rows["dyn"]["delta_pt"] == pytest.approx(100 * (rows["dyn"]["top1"] - rows["base"]["top1"]))
    assert rows["dyn"]["paper"]["method"] == "dynamic quantization"
    assert rows["dyn"]["paper"]["delta_pt"] == pytest.approx(98.73 - 98.94)
    assert rows["dyn"]["size_bytes"] < 0.35 * rows["base"]["size_bytes"]
    assert rows["base"]["speed"]["cpu"]["16"]["vs_baseline"] == 1.0
    md = files["md"].read_text()
    assert "| base | FP32 |" in md and "| dyn | dynamic INT8 |" in md
    for png in (files["accuracy_vs_throughput"], files["accuracy_vs_size"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    checker = Checker()
    checker.feed(files["html"].read_text())
    assert checker.stack == [] and checker.rows == 3 and checker.images == 2

    # --no-build regenerates from the manifests and the earlier timings of the same files.
    again = run([base, dyn], tmp_path / "report", None, 1, 0.1, 1, None)
    redone = json.loads(again["json"].read_text())
    assert [r["speed"] for r in redone["rows"]] == [r["speed"] for r in data["rows"]]
    assert any("timings reused" in n for n in redone["notes"])

    # --no-build reuses the artifacts whose recipe hash matches, and leaves out a changed recipe.
    changed = write_recipe(tmp_path, "dyn", {"mode": "dynamic", "per_channel": False})
    again = run([base, changed], tmp_path / "report2", None, 1, 0.1, 1, None)
    data = json.loads(again["json"].read_text())
    assert [r["name"] for r in data["rows"]] == ["base"] and "dyn: no current artifact" in data["notes"][0]


def test_pareto_front_and_method_classification() -> None:
    points = [(1.0, 70.0), (2.0, 75.0), (3.0, 72.0), (4.0, 60.0)]
    assert pareto(points, larger_x_is_better=True) == [(2.0, 75.0), (3.0, 72.0), (4.0, 60.0)]
    assert pareto(points, larger_x_is_better=False) == [(1.0, 70.0), (2.0, 75.0)]
    from vitdeploy.core.contract import BuildManifest

    prune = {
        "name": "p",
        "preprocess": {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        "artifacts": {"onnx": {"file": "p.onnx", "sha256": "-"}},
        "evaluate": {"top1": {"onnx_fp32": 0.5}},
        "stages": [{"stage": "prune", "config": {"ratio": 0.2}}],
        "quantize": None,
        "model": {"architecture": {"distilled": False}},
    }
    assert method_of(BuildManifest.from_dict(prune, "p.json"))[0] == "prune_0.2" and PAPER["prune_0.2"].top1 == 80.56


def test_a_single_user_recipe_gets_no_survey_columns_and_names_its_threads(cifar10: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    mine = write_recipe(tmp_path, "mine", {"mode": "none"})
    files = run([mine], tmp_path / "report", BUILD, 1, 0.1, None, None)
    md = files["md"].read_text()
    assert "paper" not in md and "smaller drop" not in md
    assert "None threads" not in md and "ONNX Runtime's default threads" in md
    assert "| mine | FP32 |" in md
