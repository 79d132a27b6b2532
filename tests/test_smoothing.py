"""SmoothQuant: the FP32 function is unchanged and activation outliers shrink."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from vitdeploy.data.datasets import DataStore, preprocess
from vitdeploy.recipe.schema import Preprocess
from vitdeploy.torch.smoothing import activation_maxima, smooth

from .conftest import tiny_vit


def spread(maxima: list[torch.Tensor]) -> float:
    return max(float(m.max() / m.median()) for m in maxima)


def test_smoothing_keeps_the_function_and_flattens_activation_ranges(cifar10: Path) -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    with torch.no_grad():  # an outlier channel, as trained ViTs have
        model.blocks[1].norm2.weight[5] = 40.0
    images = DataStore(cifar10).load("cifar10", "train").subset(64, seed=2)
    x = torch.from_numpy(preprocess(images.images, Preprocess(), 32))
    before = activation_maxima(model, x, 32)
    smoothed = copy.deepcopy(model)
    smooth(smoothed, x, alpha=0.5, batch_size=32)
    test = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(smoothed(test), model(test), rtol=1e-4, atol=1e-4)
    after = activation_maxima(smoothed, x, 32)
    assert spread(after) < spread(before) / 3
