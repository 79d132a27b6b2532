"""Hostile input: every case is refused with a one-line message naming the problem, a
non-zero exit, no traceback, and nothing written.

Recipe cases are the YAML files in tests/hostile/ (first line: `# expect: <regex>`); the
cases that need binary files (checkpoints, archives, images, ONNX files, bundles) are
generated below, since no image or model is committed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.storage import sha256_file
from vitdeploy.delivery.packaging import package

HOSTILE = Path(__file__).parent / "hostile"
RECIPE_CASES = sorted(HOSTILE.glob("*.yaml"))
TINY = (
    "model: {name: vit_tiny_patch16_224, "
    "overrides: {img_size: 32, patch_size: 8, num_classes: 10, embed_dim: 48, depth: 2, num_heads: 3}"
)


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def refuse(folder: Path, args: list[str], expect: str, watch: Path | None = None) -> str:
    """Run the CLI in `folder`; check a clean refusal and that nothing under `watch` changed."""
    watch = watch or folder
    before = snapshot(watch)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    finally:
        os.chdir(cwd)
    text = result.output
    assert result.exit_code not in (0, None), text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    assert re.search(expect, text), f"expected /{expect}/ in:\n{text}"
    errors = [line for line in text.splitlines() if line.startswith(("error:", "build failed:"))]
    assert len(errors) <= 1, text
    assert snapshot(watch) == before, "the refused command wrote files"
    return text


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda p: p.stem)
def test_hostile_recipe_is_refused(case: Path, tmp_path: Path) -> None:
    expect = case.read_text().splitlines()[0].removeprefix("# expect:").strip()
    recipes = tmp_path / "project" / "recipes"
    recipes.mkdir(parents=True)
    shutil.copy(case, recipes / case.name)
    text = refuse(tmp_path, ["check", str(recipes / case.name)], expect)
    assert case.name in text  # the message names the file
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- generated cases


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def checkpoint_recipe(folder: Path, checkpoint: str) -> list[str]:
    (folder / "r.yaml").write_text(f"name: x\n{TINY}, checkpoint: {checkpoint}}}\noutput: {{dir: out}}\n")
    return ["build", "r.yaml", "--device", "cpu"]


def pickled_code(folder: Path) -> list[str]:
    (folder / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    return checkpoint_recipe(folder, "evil.pt")


def pickled_object(folder: Path) -> list[str]:
    torch.save({"w": torch.zeros(1), "config": io.StringIO("x")}, folder / "obj.pt")
    return checkpoint_recipe(folder, "obj.pt")


def text_checkpoint(folder: Path) -> list[str]:
    (folder / "notes.pt").write_text("not a checkpoint")
    return checkpoint_recipe(folder, "notes.pt")


def truncated_safetensors(folder: Path) -> list[str]:
    save_file({"w": torch.zeros(1000)}, str(folder / "w.safetensors"))
    data = (folder / "w.safetensors").read_bytes()
    (folder / "w.safetensors").write_bytes(data[: len(data) // 2])
    return checkpoint_recipe(folder, "w.safetensors")


def garbage_safetensors(folder: Path) -> list[str]:
    (folder / "g.safetensors").write_bytes(b"\xff" * 64)
    return checkpoint_recipe(folder, "g.safetensors")


def png(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def data_get(source: str) -> list[str]:
    return ["data", "get", "hostile", "--from", source, "--cache-dir", "cache"]


def imagefolder(folder: Path, extra: dict[str, bytes], classes=("cat", "dog"), splits=("train", "test")) -> None:
    for split in splits:
        for c in classes:
            (folder / "src" / split / c).mkdir(parents=True, exist_ok=True)
            (folder / "src" / split / c / "ok.png").write_bytes(png())
    for name, data in extra.items():
        (folder / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "src" / name).write_bytes(data)


def tar_with(folder: Path, members: dict[str, bytes], name: str = "a.tar.gz") -> None:
    with tarfile.open(folder / name, "w:gz") as tf:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def tar_escape(folder: Path) -> list[str]:
    tar_with(folder, {"train/cat/a.png": png(), "../../evil/train/cat/b.png": png()})
    return data_get("a.tar.gz")


def tar_absolute(folder: Path) -> list[str]:
    tar_with(folder, {"/tmp/train/cat/a.png": png()})
    return data_get("a.tar.gz")


def zip_escape(folder: Path) -> list[str]:
    with zipfile.ZipFile(folder / "a.zip", "w") as zf:
        zf.writestr("train/cat/a.png", png())
        zf.writestr("../outside/test/cat/a.png", png())
    return data_get("a.zip")


def truncated_archive(folder: Path) -> list[str]:
    tar_with(folder, {f"train/cat/{i}.png": os.urandom(2000) for i in range(20)})
    data = (folder / "a.tar.gz").read_bytes()
    (folder / "a.tar.gz").write_bytes(data[: len(data) // 2])
    return data_get("a.tar.gz")


def not_an_archive(folder: Path) -> list[str]:
    (folder / "a.tar.gz").write_text("plain text")
    return data_get("a.tar.gz")


def truncated_image(folder: Path) -> list[str]:
    imagefolder(folder, {"train/cat/cut.jpg": jpeg()[:300]})
    return data_get("src")


def decompression_bomb(folder: Path) -> list[str]:
    imagefolder(folder, {"train/cat/bomb.png": png((10_000, 10_000), "1")})
    return data_get("src")


def fake_image(folder: Path) -> list[str]:
    imagefolder(folder, {"test/dog/readme.jpg": b"this is text"})
    return data_get("src")


def empty_dataset(folder: Path) -> list[str]:
    (folder / "src" / "train" / "cat").mkdir(parents=True)
    return data_get("src")


def empty_class(folder: Path) -> list[str]:
    imagefolder(folder, {"train/bird/a.png": png()})  # bird: train only
    return data_get("src")


def float_image(folder: Path) -> list[str]:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(buf, format="TIFF")
    imagefolder(folder, {"train/cat/float.png": buf.getvalue()})
    return data_get("src")


def classifier(path: Path, size: int = 8, classes: int = 10, external: str | None = None, dtype=TensorProto.FLOAT) -> None:
    """A real (tiny) ONNX image classifier: mean colour -> linear layer."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32), "w")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value=external)
    nodes = [
        helper.make_node("Cast", ["pixel_values"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "c",
        [helper.make_tensor_value_info("pixel_values", dtype, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def build_outputs(folder: Path, img_size: int = 8, **kw) -> Path:
    """An ONNX file and a build manifest beside it, as `vitdeploy build` leaves them."""
    model = folder / "art" / "m.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    classifier(model, **kw)
    pre = {"img_size": img_size, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic", "layout": "NCHW"}
    manifest = {
        "name": "m",
        "preprocess": pre | {"classes": [f"c{i}" for i in range(10)]},
        "evaluate": {"top1": {"onnx_fp32": 0.1}},
        "artifacts": {"onnx": {"file": "m.onnx", "sha256": sha256_file(model)}},
    }
    (folder / "art" / "m.json").write_text(json.dumps(manifest))
    return model


def bundle(folder: Path, **kw) -> Path:
    model = build_outputs(folder, **kw)
    package(model, folder / "b")
    (folder / "imgs").mkdir()
    (folder / "imgs" / "a.png").write_bytes(png())
    return folder / "b"


def onnx_truncated(folder: Path) -> list[str]:
    classifier(folder / "m.onnx")
    data = (folder / "m.onnx").read_bytes()
    (folder / "m.onnx").write_bytes(data[: len(data) // 2])
    return ["bench", "m.onnx", "--duration", "0.1"]


def onnx_garbage(folder: Path) -> list[str]:
    (folder / "m.onnx").write_bytes(os.urandom(4096))
    return ["bench", "m.onnx", "--duration", "0.1"]


def package_a_recipe(folder: Path) -> list[str]:
    (folder / "mine.yaml").write_text("name: mine\nmodel: {name: vit_tiny_patch16_224}\n")
    return ["package", "mine.yaml"]


def onnx_external_escape(folder: Path) -> list[str]:
    classifier(folder / "m.onnx", external="../../../etc/passwd")
    return ["bench", "m.onnx", "--duration", "0.1"]


def onnx_external_absolute(folder: Path) -> list[str]:
    classifier(folder / "m.onnx", external="/etc/passwd")
    return ["package", "m.onnx", "--bench", "none"]


def package_without_manifest(folder: Path) -> list[str]:
    classifier(folder / "m.onnx")
    return ["package", "m.onnx", "--bench", "none"]


def bundle_tampered(folder: Path) -> list[str]:
    b = bundle(folder)
    data = bytearray((b / "model.onnx").read_bytes())
    data[-5] ^= 1
    (b / "model.onnx").write_bytes(bytes(data))
    return ["predict", "b", "imgs"]


def bundle_extra_file(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "b" / "libhook.so").write_bytes(b"\x7fELF")
    return ["predict", "b", "imgs"]


def bundle_missing_labels(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "b" / "labels.txt").unlink()
    return ["predict", "b", "imgs"]


def bundle_bad_json(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "b" / "bundle.json").write_text("{not json")
    return ["predict", "b", "imgs"]


def bundle_archive_escape(folder: Path) -> list[str]:
    bundle(folder)
    tar_with(folder, {"bundle.json": b"{}", "../escape.txt": b"x"}, "b.tar.gz")
    return ["predict", "b.tar.gz", "imgs"]


def bundle_archive_truncated(folder: Path) -> list[str]:
    bundle(folder)
    with tarfile.open(folder / "b.tar.gz", "w:gz") as tf:
        tf.add(folder / "b", arcname=".")
    data = (folder / "b.tar.gz").read_bytes()
    (folder / "b.tar.gz").write_bytes(data[: len(data) // 3])
    return ["predict", "b.tar.gz", "imgs"]


def predict_no_images(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "empty").mkdir()
    return ["predict", "b", "empty"]


def predict_fake_image(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "imgs" / "b.jpg").write_text("text, not pixels")
    return ["predict", "b", "imgs"]


def predict_truncated_image(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "imgs" / "c.jpg").write_bytes(jpeg()[:200])
    return ["predict", "b", "imgs"]


def predict_bomb(folder: Path) -> list[str]:
    bundle(folder)
    (folder / "imgs" / "bomb.png").write_bytes(png((10_000, 10_000), "1"))
    return ["predict", "b", "imgs"]


def predict_wrong_size(folder: Path) -> list[str]:
    bundle(folder, img_size=16)  # preprocess says 16x16, the model takes 8x8
    return ["predict", "b", "imgs"]


def predict_wrong_input_type(folder: Path) -> list[str]:
    bundle(folder, dtype=TensorProto.UINT8)
    return ["predict", "b", "imgs"]


def predict_unknown_provider(folder: Path) -> list[str]:
    bundle(folder)
    return ["predict", "b", "imgs", "--provider", "npu"]


GENERATED: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "pickled_checkpoint_with_code": (pickled_code, r"evil.pt: refused to load: not a plain tensor checkpoint \(Unsupported"),
    "pickled_checkpoint_with_objects": (pickled_object, r"obj.pt: refused to load"),
    "text_as_checkpoint": (text_checkpoint, r"notes.pt: refused to load: not a plain tensor checkpoint"),
    "truncated_safetensors": (truncated_safetensors, r"w.safetensors: not a readable safetensors file"),
    "garbage_safetensors": (garbage_safetensors, r"g.safetensors: not a readable safetensors file"),
    "tar_member_escapes": (tar_escape, r"member '../../evil/train/cat/b.png' points outside"),
    "tar_member_absolute": (tar_absolute, r"member '/tmp/train/cat/a.png' points outside"),
    "zip_member_escapes": (zip_escape, r"member '../outside/test/cat/a.png' points outside"),
    "truncated_archive": (truncated_archive, r"a.tar.gz: truncated or corrupt archive"),
    "not_an_archive": (not_an_archive, r"a.tar.gz: not a folder, .zip or .tar"),
    "truncated_image": (truncated_image, r"train/cat/cut.jpg: truncated or corrupt image"),
    "decompression_bomb": (decompression_bomb, r"train/cat/bomb.png: .*over the 50,000,000-pixel limit"),
    "text_named_jpg": (fake_image, r"test/dog/readme.jpg: not an image"),
    "empty_dataset": (empty_dataset, r"no images for split"),
    "class_missing_from_a_split": (empty_class, r"split 'test' has no images of class\(es\) bird"),
    "float_pixels": (float_image, r"train/cat/float.png: floating-point pixels"),
    "onnx_truncated": (onnx_truncated, r"m.onnx: not a readable ONNX model; truncated or corrupt"),
    "onnx_random_bytes": (onnx_garbage, r"m.onnx: not a readable ONNX model"),
    "package_given_the_recipe": (package_a_recipe, r"mine.yaml: a recipe, not an ONNX model; give the .onnx file"),
    "onnx_external_data_escapes": (onnx_external_escape, r"m.onnx: external data '../../../etc/passwd' lies outside"),
    "onnx_external_data_absolute": (onnx_external_absolute, r"m.onnx: external data '/etc/passwd' lies outside"),
    "package_without_manifest": (package_without_manifest, r"m.onnx: no build manifest m.json beside it"),
    "bundle_tampered_model": (bundle_tampered, r"b: model.onnx does not match its checksum"),
    "bundle_extra_file": (bundle_extra_file, r"b: libhook.so is not part of the bundle"),
    "bundle_missing_labels": (bundle_missing_labels, r"b: labels.txt is missing"),
    "bundle_manifest_not_json": (bundle_bad_json, r"b: bundle.json is not valid JSON"),
    "bundle_archive_escapes": (bundle_archive_escape, r"b.tar.gz: member '../escape.txt' is not a plain top-level file"),
    "bundle_archive_truncated": (bundle_archive_truncated, r"b.tar.gz: not a readable bundle archive"),
    "predict_no_images": (predict_no_images, r"no images \(.*\) in empty"),
    "predict_text_named_jpg": (predict_fake_image, r"skipped imgs/b.jpg: not an image"),
    "predict_truncated_image": (predict_truncated_image, r"skipped imgs/c.jpg: truncated or corrupt image"),
    "predict_decompression_bomb": (predict_bomb, r"skipped imgs/bomb.png: .*over the 50,000,000-pixel limit"),
    "predict_input_shape_mismatch": (predict_wrong_size, r"model.onnx: input shape .* does not take 3x16x16 images"),
    "predict_input_type_mismatch": (predict_wrong_input_type, r"model.onnx: input type uint8 is not float32"),
    "predict_unknown_provider": (predict_unknown_provider, r"unknown provider .npu.; choose from cpu, .*openvino"),
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_hostile_file_is_refused(name: str, tmp_path: Path) -> None:
    make, expect = GENERATED[name]
    args = make(tmp_path)
    refuse(tmp_path, args, expect)
    assert not (tmp_path / "pwned").exists()


def test_the_corpus_has_at_least_thirty_distinct_cases() -> None:
    assert len(RECIPE_CASES) + len(GENERATED) >= 30
