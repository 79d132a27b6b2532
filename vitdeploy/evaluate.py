"""Top-1 accuracy of PyTorch models and ONNX Runtime sessions on the same preprocessed images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdeploy.data import ImageSet, batches, preprocess
from vitdeploy.errors import UserError
from vitdeploy.progress import progress_bar
from vitdeploy.recipe import Preprocess

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch


RUNTIMES = ("onnxruntime", "openvino")
Predict = Callable[[np.ndarray], np.ndarray]  # preprocessed float32 NCHW batch -> logits


def onnx_logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inp = session.get_inputs()[0].name
    return session.run(None, {inp: x})[0]


def predictor(path: Path, runtime: str = "onnxruntime", precision: str = "f32") -> Predict:
    """Logits of an ONNX file on a runtime: ONNX Runtime's CPU provider, or OpenVINO's CPU runtime
    (computing the layers left in float at `precision`)."""
    if runtime == "openvino":
        from vitdeploy.openvino_runtime import missing_reason
        from vitdeploy.openvino_runtime import predictor as openvino_predictor

        reason = missing_reason()
        if reason:
            raise UserError(f"runtime openvino: {reason}")
        return openvino_predictor(path, precision=precision)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: onnx_logits(session, x)


def predict_accuracy(predict: Predict, images: ImageSet, pre: Preprocess, size: int | None, batch_size: int, label: str) -> float:
    correct = 0
    with progress_bar() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(images))
        for x, y in batches(images, batch_size):
            correct += int((predict(preprocess(x, pre, size)).argmax(1) == y).sum())
            bar.advance(task, len(y))
    return correct / len(images)


def onnx_accuracy(
    session: ort.InferenceSession, images: ImageSet, pre: Preprocess, batch_size: int = 64, label: str = "onnx"
) -> float:
    size = session.get_inputs()[0].shape[-1]
    size = size if isinstance(size, int) else None
    return predict_accuracy(lambda x: onnx_logits(session, x), images, pre, size, batch_size, label)


def torch_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x).to(device)).float().cpu().numpy()


def torch_accuracy(
    model: torch.nn.Module,
    images: ImageSet,
    pre: Preprocess,
    device: torch.device,
    batch_size: int = 64,
    label: str | None = "PyTorch",
) -> float:
    """Top-1 of `model`; `label` None shows no progress bar (inside another one, e.g. training)."""
    was_training = model.training
    model.eval()
    size = getattr(getattr(model, "patch_embed", None), "img_size", (None,))[0]
    correct = 0
    with progress_bar() if label else contextlib.nullcontext() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(images)) if bar else None
        for x, y in batches(images, batch_size):
            correct += int((torch_logits(model, preprocess(x, pre, size), device).argmax(1) == y).sum())
            if bar:
                bar.advance(task, len(y))
    model.train(was_training)
    return correct / len(images)
