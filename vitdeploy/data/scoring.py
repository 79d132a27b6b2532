"""Top-1 of any predictor (an ONNX Runtime session, an OpenVINO model, a PyTorch model wrapped
as one) on the same preprocessed images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vitdeploy.core.progress import progress_bar
from vitdeploy.data.datasets import ImageSet, batches, preprocess
from vitdeploy.recipe.schema import Preprocess

Predict = Callable[[np.ndarray], np.ndarray]  # preprocessed float32 NCHW batch -> logits


def top1(
    predict: Predict, images: ImageSet, pre: Preprocess, size: int | None, batch_size: int,
    advance: Callable[[int], object] = lambda n: None,
) -> float:  # fmt: skip
    """The one top-1 loop: `batch_size` images at a time, preprocessed as the model expects;
    `advance(n)` after each batch of n."""
    correct = 0
    for x, y in batches(images, batch_size):
        correct += int((predict(preprocess(x, pre, size)).argmax(1) == y).sum())
        advance(len(y))
    return correct / len(images)


def predict_accuracy(predict: Predict, images: ImageSet, pre: Preprocess, size: int | None, batch_size: int, label: str) -> float:
    """`top1` with a progress bar named `label`."""
    with progress_bar() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(images))
        return top1(predict, images, pre, size, batch_size, lambda n: bar.advance(task, n))


def onnx_accuracy(session, images: ImageSet, pre: Preprocess, batch_size: int = 64, label: str = "onnx") -> float:
    """Top-1 of an ONNX Runtime session, at the image size its input declares."""
    from vitdeploy.runtime.sessions import session_predictor

    size = session.get_inputs()[0].shape[-1]
    size = size if isinstance(size, int) else None
    return predict_accuracy(session_predictor(session), images, pre, size, batch_size, label)
