"""timm's evaluation crop (`crop_pct`): the same pixels in the build, in the artifact's contract
and in `predict`, and training crops that end at the model's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdeploy.core.contract import InputContract
from vitdeploy.core.errors import UserError
from vitdeploy.data.datasets import DataStore, fit
from vitdeploy.recipe.schema import Preprocess, TrainingConfig
from vitdeploy.runtime.imaging import decode, scale_size
from vitdeploy.torch.stages.loop import BatchAugment


def test_a_contract_with_a_crop_is_version_2_and_one_without_stays_version_1() -> None:
    whole = InputContract(224, (0.5,) * 3, (0.25,) * 3)
    cropped = InputContract(224, (0.5,) * 3, (0.25,) * 3, crop_pct=0.9)
    assert whole.bundle_record()["version"] == 1 and "crop_pct" not in whole.bundle_record()
    record = cropped.bundle_record()
    assert record["version"] == 2 and record["crop_pct"] == 0.9 and "size / crop_pct" in record["resize"]
    assert InputContract.from_record(record, "preprocess.json") == cropped
    assert InputContract.from_record(cropped.manifest_record(), "manifest").crop_pct == 0.9
    with pytest.raises(UserError, match="crop_pct must be in"):
        InputContract.from_record(record | {"crop_pct": 1.5}, "preprocess.json")


def test_predict_crops_as_timm_evaluates() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    path_bytes = _png(image)
    got = decode(path_bytes, 224, "bicubic", crop_pct=0.875)
    side = scale_size(224, 0.875)  # 256
    expected = image.resize((384, side), Image.BICUBIC).crop((80, 16, 304, 240))
    np.testing.assert_array_equal(got, np.asarray(expected))
    # a size x size image is still cropped: only crop_pct 1 leaves it alone
    square = decode(_png(image.resize((224, 224))), 224, "bicubic", crop_pct=0.875)
    assert square.shape == (224, 224, 3) and not np.array_equal(square, np.asarray(image.resize((224, 224))))


def test_the_build_sees_the_pixels_predict_sees(tmp_path: Path) -> None:
    """A folder imported at the crop's scale size and centre-cropped by the build's preprocessing
    equals each file read by the predictor's decode with the crop."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "src" / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate([(90, 60), (64, 64), (50, 120)]):
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "src" / split / cls / f"{i}.png")
    pre = Preprocess(crop_pct=0.8)
    store = DataStore(tmp_path / "cache")
    store.import_source("mine", tmp_path / "src", {"train", "test"}, size=scale_size(32, 0.8))
    test = store.load("mine", "test")
    build_side = fit(test.images, 32, pre)
    files = sorted((tmp_path / "src" / "test").rglob("*.png"))
    predict_side = np.stack([decode(f, 32, "bicubic", crop_pct=0.8) for f in files])
    np.testing.assert_array_equal(build_side, predict_side)


@pytest.mark.parametrize("augment", ["none", "flip_crop", "random_resized_crop"])
def test_training_batches_come_out_at_the_model_size(augment: str) -> None:
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    cfg = TrainingConfig(augment=augment)
    out = BatchAugment(cfg, Preprocess(), torch.device("cpu"), size=32)(x)
    again = BatchAugment(cfg, Preprocess(), torch.device("cpu"), size=32)(x)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, again)  # drawn from the seeded generator: resumable
    if augment == "none":
        expected = (x[..., 4:36, 4:36].float() / 255 - torch.tensor(Preprocess().mean).view(1, 3, 1, 1)) / torch.tensor(
            Preprocess().std
        ).view(1, 3, 1, 1)
        torch.testing.assert_close(out, expected)


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
