"""Top-1 accuracy of PyTorch models and ONNX Runtime sessions on the same preprocessed images."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from vitdeploy.data import ImageSet, batches, preprocess
from vitdeploy.progress import progress_bar
from vitdeploy.recipe import Preprocess

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch


def onnx_logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inp = session.get_inputs()[0].name
    return session.run(None, {inp: x})[0]


def onnx_accuracy(
    session: ort.InferenceSession, images: ImageSet, pre: Preprocess, batch_size: int = 64, label: str = "onnx"
) -> float:
    size = session.get_inputs()[0].shape[-1]
    size = size if isinstance(size, int) else None
    correct = 0
    with progress_bar() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(images))
        for x, y in batches(images, batch_size):
            correct += int((onnx_logits(session, preprocess(x, pre, size)).argmax(1) == y).sum())
            bar.advance(task, len(y))
    return correct / len(images)


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
