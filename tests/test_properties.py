"""Property-based tests: the recipe schema and the image loader over generated input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitdeploy.core.contract import InputContract
from vitdeploy.core.errors import RecipeError
from vitdeploy.data.datasets import preprocess
from vitdeploy.recipe.schema import Preprocess, Recipe, load_recipe, parse_recipe
from vitdeploy.runtime import imaging
from vitdeploy.runtime.imaging import ImageError, decode, decode_jpeg, resize_center_crop
from vitdeploy.runtime.reader import normalizer

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
training = st.fixed_dictionaries(
    {},
    optional={
        "epochs": st.integers(1, 50),
        "batch_size": st.integers(1, 512),
        "lr": st.floats(1e-5, 1e-1),
        "augment": st.sampled_from(["none", "flip_crop", "randaugment"]),
        "seed": st.integers(0, 10_000),
        "train_samples": st.none() | st.integers(1, 50_000),
    },
)
finetune = training.map(lambda d: {"stage": "finetune", **d})
prune = st.fixed_dictionaries(
    {"stage": st.just("prune"), "ratio": st.floats(0.01, 0.9)},
    optional={"importance": st.sampled_from(["taylor", "l1", "kl"]), "steps": st.integers(1, 5)},
)
nystrom = st.fixed_dictionaries({"stage": st.just("nystrom"), "landmarks": st.integers(1, 128)})
quantize = st.one_of(
    st.just({"mode": "none"}),
    st.fixed_dictionaries({"mode": st.just("dynamic")}, optional={"per_channel": st.booleans()}),
    st.fixed_dictionaries(
        {"mode": st.just("static")},
        optional={
            "format": st.sampled_from(["qdq", "qoperator"]),
            "calibration": st.fixed_dictionaries({"samples": st.integers(1, 1000)}),
        },
    ),
)
recipes = st.fixed_dictionaries(
    {"name": names, "model": st.just({"name": "vit_tiny_patch16_224"})},
    optional={
        "description": st.text(max_size=40),
        "stages": st.lists(st.one_of(finetune, prune, nystrom), max_size=4),
        "quantize": quantize,
        "evaluate": st.fixed_dictionaries({}, optional={"samples": st.integers(1, 10_000), "torch": st.booleans()}),
    },
)


@SETTINGS
@given(recipes)
def test_valid_recipes_round_trip(data: dict) -> None:
    recipe = parse_recipe(data, base=Path("/project/recipes"))
    again = parse_recipe(json.loads(recipe.model_dump_json()), base=Path("/elsewhere"))
    assert again == recipe and again.digest() == recipe.digest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
sections = ["name", "model", "data", "stages", "export", "optimize", "quantize", "evaluate", "output", "runtimes"]


@SETTINGS
@given(recipes, st.sampled_from(sections), json_values)
def test_a_broken_section_is_a_recipe_error_never_a_crash(data: dict, key: str, value: object) -> None:
    broken = data | {key: value}
    try:
        parse_recipe(broken, base=Path("/project/recipes"))
    except RecipeError as err:
        assert err.problems and all(isinstance(p, str) for p in err.problems)


@SETTINGS
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_file_text_is_a_recipe_or_a_recipe_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("r") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_recipe(path), Recipe)
    except RecipeError as err:
        assert str(path) in str(err)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I"]


def encode(mode: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.new(mode, (width, height))
    if mode in ("RGB", "RGBA", "CMYK", "LA"):
        im = Image.frombytes(mode, (width, height), rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8).tobytes())
    elif mode in ("L", "P", "1"):
        im = Image.frombytes("L", (width, height), rng.integers(0, 256, (height, width), dtype=np.uint8).tobytes()).convert(mode)
    elif mode == "I;16":
        im = Image.frombytes("I;16", (width, height), rng.integers(0, 65536, (height, width), dtype="<u2").tobytes())
    buf = io.BytesIO()
    im.save(buf, format="TIFF" if mode in ("CMYK", "I") else "PNG")
    return buf.getvalue()


@SETTINGS
@given(st.sampled_from(MODES), st.integers(1, 80), st.integers(1, 80), st.integers(0, 2**16), st.sampled_from([None, 16, 32]))
def test_every_integer_mode_decodes_to_rgb_of_the_asked_size(mode: str, w: int, h: int, seed: int, size: int | None) -> None:
    array = decode(encode(mode, w, h, seed), size)
    assert array.dtype == np.uint8 and array.shape == ((size, size, 3) if size else (h, w, 3))


def test_sixteen_bit_gray_keeps_its_range() -> None:
    im = Image.frombytes("I;16", (2, 1), np.array([[0, 65535]], dtype="<u2").tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    assert decode(buf.getvalue())[0, :, 0].tolist() == [0, 255]


@SETTINGS
@given(st.sampled_from(MODES), st.integers(1, 40), st.integers(0, 2**16), st.data())
def test_damaged_images_decode_or_raise_image_error(mode: str, side: int, seed: int, data: st.DataObject) -> None:
    raw = bytearray(encode(mode, side, side, seed))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.integers(0, max(0, cut - 1)), max_size=4)) if cut else []
    for i in flips:
        raw[i] ^= 0xFF
    try:
        array = decode(bytes(raw[:cut]), 16)
    except ImageError:
        return
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_the_loader(blob: bytes) -> None:
    with contextlib.suppress(ImageError):
        assert decode(blob, 8).shape == (8, 8, 3)


@SETTINGS
@given(
    st.sampled_from(["RGB", "L", "CMYK"]),
    st.integers(1, 64),
    st.integers(1, 64),
    st.integers(5, 100),
    st.booleans(),
    st.sampled_from([0, 1, 2]),
    st.integers(0, 2**16),
    st.sampled_from([None, 16]),
)
def test_the_jpeg_fast_path_gives_pillows_pixels(
    mode: str, w: int, h: int, quality: int, progressive: bool, subsampling: int, seed: int, size: int | None
) -> None:
    rng = np.random.default_rng(seed)
    im = Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, progressive=progressive, subsampling=subsampling)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as reference:
        rgb = reference.convert("RGB")
        expected = np.asarray(rgb if size is None or rgb.size == (size, size) else resize_center_crop(rgb, size))
    np.testing.assert_array_equal(decode(data, size), expected)
    assert (decode_jpeg(data) is not None) == (mode == "RGB")
    with mock.patch.object(imaging, "simplejpeg", None):  # where no simplejpeg wheel exists
        np.testing.assert_array_equal(decode(data, size), expected)
        assert (decode_jpeg(data) is not None) == (mode == "RGB")


@SETTINGS
@given(st.integers(1, 5), st.integers(0, 2**16))
def test_the_predictors_normalization_is_the_builds_bit_for_bit(n: int, seed: int) -> None:
    images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    x = normalizer(InputContract(32, pre.mean, pre.std))(images)
    assert x.flags["C_CONTIGUOUS"] and x.dtype == np.float32
    np.testing.assert_array_equal(x, preprocess(images, pre, 32))


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/self/maps"])
def test_files_whose_size_the_kernel_does_not_know_are_read_whole(path: str) -> None:
    # /proc files report size 0 and have content: the reader must not trust fstat's size
    first = imaging.read_file(Path(path))
    assert len(first) > 0 and first.startswith(Path(path).read_bytes()[:32])


@SETTINGS
@given(st.integers(0, 300_000))
def test_a_file_is_read_byte_for_byte(tmp_path_factory: pytest.TempPathFactory, n: int) -> None:
    path = tmp_path_factory.mktemp("read") / "blob"
    blob = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(blob)
    assert imaging.read_file(path) == blob
