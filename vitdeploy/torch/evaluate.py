"""Logits and top-1 of PyTorch models on the same preprocessed images as the ONNX files."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from vitdeploy.core.progress import progress_bar
from vitdeploy.data.datasets import ImageSet, batches, preprocess
from vitdeploy.recipe.schema import Preprocess


def torch_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
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
