"""Mistakes a newcomer makes, each answered in one line with what to do instead."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from vitdeploy import __version__
from vitdeploy.cli import app

from .conftest import tiny_vit

runner = CliRunner()


def test_short_version_flag() -> None:
    done = runner.invoke(app, ["-V"])
    assert done.exit_code == 0 and __version__ in done.output


def test_bench_with_a_missing_model_stops_before_measuring(tmp_path: Path) -> None:
    done = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx"), "--iters", "5"])
    assert done.exit_code == 2
    assert "no such model file" in done.output and "nope.onnx" in done.output
    assert "Traceback" not in done.output and "FileNotFoundError" not in done.output


def test_predict_on_a_bare_model_says_to_package_it(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really a model")
    (tmp_path / "a.jpg").write_bytes(b"")
    done = runner.invoke(app, ["predict", str(model), str(tmp_path / "a.jpg")])
    assert done.exit_code == 2
    assert "package it first" in done.output and "vitdeploy package" in done.output
    assert len(done.output.strip().splitlines()) == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_a_gpu_provider_that_is_not_installed_is_refused_with_the_install_line(tmp_path: Path) -> None:
    from vitdeploy.runtime.sessions import ProviderUnavailable, open_session

    with pytest.raises(ProviderUnavailable, match=r"pip install 'vitdeploy\[gpu\]'"):
        open_session(tmp_path / "m.onnx", "cuda")


def test_saved_weights_are_ordinary_files(tmp_path: Path) -> None:
    from vitdeploy.torch.models import save_weights

    old = os.umask(0o022)
    try:
        save_weights(tiny_vit(), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


@pytest.mark.parametrize("python_has_data_filter", [True, False])
def test_bundle_archives_open_on_pythons_with_and_without_tarfiles_data_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_has_data_filter: bool
) -> None:
    """Debian 12's Python 3.11.2 (a common device image) predates tarfile's filter argument."""
    import json
    import tarfile

    from vitdeploy.core.storage import sha256_file
    from vitdeploy.runtime.bundle import open_bundle

    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    (folder / "labels.txt").write_text("cat\ndog\n")
    (folder / "preprocess.json").write_text(json.dumps({"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}))
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in folder.iterdir()}
    (folder / "bundle.json").write_text(json.dumps({"format": 1, "files": files, "model": {"file": "model.onnx"}}))
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, arcname=p.name)
    if not python_has_data_filter:  # extractall as Python 3.11.2 has it: no filter argument
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        original = tarfile.TarFile.extractall

        def extractall_without_filter(self, path=".", members=None, *, numeric_owner=False):
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filter)
    opened = open_bundle(tmp_path / "b.tar.gz", tmp_path / "scratch")
    assert opened.labels == ["cat", "dog"] and opened.model.read_bytes() == b"weights"


def _recipe(tmp_path: Path, **sections) -> Path:
    import yaml

    recipe = {"name": "mine", "model": {"name": "vit_tiny_patch16_224"}} | sections
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_misspelled_key_names_the_nearest_one(tmp_path: Path) -> None:
    done = runner.invoke(app, ["check", str(_recipe(tmp_path, quantise={"mode": "static"}))])
    assert done.exit_code == 2 and "quantise: unknown key; did you mean quantize?" in done.output
    far = runner.invoke(app, ["check", str(_recipe(tmp_path, zzz=1))])
    assert "zzz: unknown key; allowed:" in far.output and "did you mean" not in far.output


def test_a_model_folder_given_as_checkpoint_is_named_as_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-vit"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    done = runner.invoke(
        app, ["check", str(_recipe(tmp_path, model={"name": "vit_tiny_patch16_224", "checkpoint": str(folder)}))]
    )
    assert done.exit_code == 2 and "is a Hugging Face model folder" in done.output and "file not found" not in done.output
    (folder / "config.json").unlink()
    done = runner.invoke(
        app, ["check", str(_recipe(tmp_path, model={"name": "vit_tiny_patch16_224", "checkpoint": str(folder)}))]
    )
    assert "is a folder; give the weights file inside it" in done.output


def test_a_random_model_on_your_own_folder_is_warned_about_cifar10_statistics(tmp_path: Path) -> None:
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir()
    data = {"dataset": "photos", "source": str(tmp_path / "photos")}
    model = {"name": "vit_tiny_patch16_224", "overrides": {"num_classes": 2}}
    done = runner.invoke(app, ["check", str(_recipe(tmp_path, data=data, model=model))])
    assert done.exit_code == 0 and "CIFAR-10's mean" in done.output and "data.preprocess" in done.output
    data["preprocess"] = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    done = runner.invoke(app, ["check", str(_recipe(tmp_path, data=data, model=model))])
    assert done.exit_code == 0 and "CIFAR-10's mean" not in done.output
