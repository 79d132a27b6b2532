"""Bundles and the torch-free predictor, on a real build of a small recipe."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore
from vitdeploy.delivery.packaging import package
from vitdeploy.runtime.bundle import open_bundle
from vitdeploy.runtime.predict import Failure, Prediction, Tally, bundle_predictor, predict

from .test_pipeline import teacher_recipe

SAMPLES = 120


@pytest.fixture(scope="module")
def built(cifar10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher as static INT8, scored on the first SAMPLES test images, and those images as PNG files."""
    tmp = tmp_path_factory.mktemp("bundle")
    recipe = teacher_recipe(tmp, "edge", samples=SAMPLES)
    done = subprocess.run([sys.executable, "-m", "vitdeploy.cli", "build", str(recipe), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    test = DataStore(cifar10).load("cifar10", "test").subset(SAMPLES)
    for i, (image, label) in enumerate(zip(test.images, test.labels, strict=True)):
        folder = tmp / "images" / test.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")  # lossless: the build's exact pixels
    return tmp


def test_bundle_holds_what_a_device_needs_and_verifies(built: Path) -> None:
    target = package(built / "out" / "edge.onnx", built / "edge.bundle", benchmarks=[{"provider": "cpu", "batch": 1}])
    b = open_bundle(target)
    assert set(b.manifest["files"]) == {"model.onnx", "labels.txt", "preprocess.json"}
    assert b.labels[:2] == ["airplane", "automobile"] and len(b.labels) == 10
    assert b.preprocess["size"] == 32 and b.preprocess["dtype"] == "float32" and b.preprocess["interpolation"] == "bicubic"
    manifest = json.loads((built / "out" / "edge.json").read_text())
    assert b.manifest["accuracy"]["top1"] == manifest["evaluate"]["top1"]["onnx_int8"]
    assert b.manifest["recipe_sha256"] == manifest["recipe"]["sha256"]
    assert b.manifest["model"]["opsets"]["ai.onnx"] == 17 and b.manifest["model"]["min_onnxruntime"] == "1.12"
    assert b.manifest["benchmarks"] == [{"provider": "cpu", "batch": 1}]


def test_predict_matches_the_builds_top1_on_the_same_images(built: Path) -> None:
    b = open_bundle(package(built / "out" / "edge.onnx", built / "p.bundle"))
    tally = Tally()
    items = list(predict(b, [built / "images"], bundle_predictor(b, "cpu", None), batch=7, top_k=3, tally=tally))
    manifest = json.loads((built / "out" / "edge.json").read_text())
    assert tally.images == tally.labelled == SAMPLES and tally.failed == 0
    assert tally.top1 == pytest.approx(manifest["evaluate"]["top1"]["onnx_int8"], abs=1e-9)
    first = items[0]
    assert isinstance(first, Prediction) and len(first.labels) == 3
    assert first.probabilities[0] >= first.probabilities[1] >= first.probabilities[2]


def test_archive_bundle_and_ort_format_give_the_same_predictions(built: Path) -> None:
    archive = package(built / "out" / "edge.onnx", built / "edge.tar.gz", ort_format=True)
    with tarfile.open(archive) as tf:
        assert sorted(tf.getnames()) == sorted(
            ["bundle.json", "labels.txt", "model.onnx", "model.ort", "preprocess.json", "required_operators.config"]
        )
    b = open_bundle(archive, built / "scratch")
    assert b.manifest["ort_format"]["max_abs_output_diff_vs_onnx"] <= 1e-4
    assert (
        "QLinearMatMul" in (b.root / "required_operators.config").read_text()
        or "MatMul" in (b.root / "required_operators.config").read_text()
    )


def test_predict_cli_writes_csv_and_json_lines(built: Path) -> None:
    bundle = package(built / "out" / "edge.onnx", built / "cli.bundle")
    (built / "odd").mkdir(exist_ok=True)
    Image.new("CMYK", (40, 24), (0, 255, 255, 0)).save(built / "odd" / "cmyk.jpg")  # odd mode and size: converted
    (built / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    runner_ = CliRunner()
    res = runner_.invoke(app, ["predict", str(bundle), str(built / "odd"), "--csv", "-o", str(built / "r.csv"), "--top-k", "2"])
    assert res.exit_code == 1  # one image could not be read; the others are still classified
    rows = list(csv.DictReader((built / "r.csv").open()))
    assert [Path(r["path"]).name for r in rows] == ["broken.png", "cmyk.jpg"]
    assert rows[0]["error"] and not rows[1]["error"] and rows[1]["label_1"] in open_bundle(bundle).labels
    res = runner_.invoke(app, ["predict", str(bundle), str(built / "odd" / "cmyk.jpg"), "--json"])
    assert res.exit_code == 0
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(record["top"]) == 3 and abs(sum(t["probability"] for t in record["top"])) <= 1.0 + 1e-6


def test_predict_never_imports_torch(built: Path) -> None:
    bundle = package(built / "out" / "edge.onnx", built / "t.bundle")
    code = (
        "import sys\n"
        "from vitdeploy.cli import main\n"
        f"sys.argv = ['vitdeploy', 'predict', {str(bundle)!r}, {str(built / 'images')!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('TORCH-FREE')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "TORCH-FREE" in done.stdout, done.stderr[-2000:]


def test_package_never_imports_torch(built: Path) -> None:
    code = (
        "import sys\n"
        "from vitdeploy.cli import main\n"
        f"sys.argv = ['vitdeploy', 'package', {str(built / 'out' / 'edge.onnx')!r}, '--out', {str(built / 'p.tar.gz')!r},"
        " '--batch', '1', '--duration', '0.2']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('TORCH-FREE')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "TORCH-FREE" in done.stdout, done.stderr[-2000:]
    assert (built / "p.tar.gz").is_file() and "vitdeploy predict" in done.stdout  # says what to run next


def test_failures_are_reported_in_order_with_the_rest(built: Path, tmp_path: Path) -> None:
    b = open_bundle(package(built / "out" / "edge.onnx", tmp_path / "b"))
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_bytes(b"nope")
    out = list(predict(b, [tmp_path / "in"], bundle_predictor(b, "cpu", 1), batch=1))
    assert [type(o) for o in out] == [Prediction, Failure]


def test_predict_on_openvino_agrees_with_onnx_runtime(built: Path) -> None:
    pytest.importorskip("openvino")
    b = open_bundle(package(built / "out" / "edge.onnx", built / "ov.bundle"))
    import openvino as ov

    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    tallies = {}
    for provider in ("cpu", "openvino", "openvino-bf16") if bf16 else ("cpu", "openvino"):
        tallies[provider] = Tally()
        list(predict(b, [built / "images"], bundle_predictor(b, provider, 2), batch=16, tally=tallies[provider]))
    for provider, tally in tallies.items():
        assert tally.images == SAMPLES
        assert abs(tally.correct - tallies["cpu"].correct) <= 2, provider
    if not bf16:
        with pytest.raises(UserError, match="no bfloat16 support"):
            bundle_predictor(b, "openvino-bf16", 2)


def test_package_cli_benchmarks_into_the_bundle(built: Path) -> None:
    args = ["package", str(built / "out" / "edge.onnx"), "--out", str(built / "cli.tar.gz"), "--batch", "1", "--duration", "0.2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with tarfile.open(built / "cli.tar.gz") as tf:
        record = json.load(tf.extractfile("bundle.json"))
    (figure,) = record["benchmarks"]
    assert figure["provider"] == "cpu" and figure["batch"] == 1 and figure["throughput"] > 0 and figure["latency_p50_ms"] > 0
    assert record["benchmark_environment"]["cpu_isa"] and record["benchmark_environment"]["onnxruntime"]


def test_the_fp32_export_is_packaged_with_its_own_accuracy_and_a_changed_file_is_refused(built: Path) -> None:
    manifest = json.loads((built / "out" / "edge.json").read_text())
    b = open_bundle(package(built / "out" / "edge.fp32.onnx", built / "fp32.bundle"))
    assert b.manifest["accuracy"]["top1"] == manifest["evaluate"]["top1"]["onnx_fp32"]
    assert b.manifest["quantization"] is None and b.manifest["accuracy"]["per_runtime"] == {}
    q = open_bundle(package(built / "out" / "edge.onnx", built / "int8.bundle")).manifest["quantization"]
    assert q["mode"] == "static" and q["weight_type"] == "int8" and q["reduce_range"] == manifest["quantize"]["reduce_range"]
    changed = built / "changed"
    changed.mkdir()
    shutil.copy(built / "out" / "edge.json", changed / "edge.json")
    data = bytearray((built / "out" / "edge.onnx").read_bytes())
    data[-1] ^= 1
    (changed / "edge.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="changed since it was built"):
        package(changed / "edge.onnx", changed / "x.bundle")
    assert not (changed / "x.bundle").exists()


def test_int8_saturation_risk_is_named_only_where_it_exists() -> None:
    from vitdeploy.runtime.predict import int8_saturation_risk

    u8s8 = {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False}
    avx2 = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False}
    assert "no VNNI" in int8_saturation_risk(u8s8, avx2)
    assert int8_saturation_risk(u8s8, avx2 | {"avx512_vnni": True}) is None
    assert int8_saturation_risk(u8s8, avx2 | {"avx_vnni": True}) is None
    assert int8_saturation_risk(u8s8 | {"reduce_range": True}, avx2) is None
    assert int8_saturation_risk(u8s8 | {"activation_type": "int8"}, avx2) is None
    assert int8_saturation_risk(None, avx2) is None  # FP32
    assert int8_saturation_risk(u8s8, {}) is None  # not x86: other kernels
