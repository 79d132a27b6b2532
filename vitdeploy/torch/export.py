"""PyTorch -> ONNX export with a dynamic batch axis, and the ONNX-vs-PyTorch parity check."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from vitdeploy.core.contract import INPUT_NAME
from vitdeploy.core.storage import atomic_path
from vitdeploy.data.datasets import ImageSet, batches, preprocess
from vitdeploy.data.scoring import Predict
from vitdeploy.recipe.schema import ExportSpec, Preprocess
from vitdeploy.runtime.sessions import open_predictor
from vitdeploy.torch.evaluate import torch_logits
from vitdeploy.torch.export_rules import apply_export_rules
from vitdeploy.torch.models import split_qkv

OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, spec: ExportSpec, img_size: int, target: Path, *, in_place: bool = False) -> Path:
    """Export `model` to `target`, atomically, as a single self-contained file.

    The model is left unchanged, unless `in_place`: then it is rewritten for export (split q/k/v,
    export rules; the same function) instead of copied, which saves its size in memory."""
    model = (model if in_place else copy.deepcopy(model)).cpu().eval()
    if spec.split_qkv:
        split_qkv(model)
    apply_export_rules(model)
    example = torch.randn(spec.trace_batch, 3, img_size, img_size)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.exporter == "dynamo":
            dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if spec.dynamic_batch else None
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=spec.opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False,
            )  # fmt: skip
            program.save(str(tmp), external_data=False)
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if spec.dynamic_batch else None
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=spec.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
            )  # fmt: skip
        onnx.checker.check_model(str(tmp))
    return target


@dataclass(frozen=True)
class Parity:
    samples: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    batch_sizes_checked: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def reference_logits(model: nn.Module, images: ImageSet, pre: Preprocess, img_size: int, batch_size: int = 32) -> np.ndarray:
    """PyTorch's logits of the parity images, in order.

    A build computes them once and every parity check (exported, fused, INT8, each runtime)
    compares against the same array: at 224² on two cores one pass over 256 images takes
    about 37 s, and a static INT8 build with OpenVINO checks four files.
    """
    device = next(model.parameters()).device
    return np.concatenate([torch_logits(model, preprocess(x, pre, img_size), device) for x, _ in batches(images, batch_size)])


def check_parity(
    model: nn.Module | np.ndarray,
    onnx_path: Path,
    images: ImageSet,
    pre: Preprocess,
    img_size: int,
    batch_size: int = 32,
    provider: str = "cpu",
    predict: Predict | None = None,
) -> Parity:
    """Run real images through PyTorch and an ONNX runtime; compare logits and top-1.

    `model`: the PyTorch model, or its `reference_logits` on `images` already computed.
    The batch size differs from the export's trace batch, so a baked-in batch shows up here.
    `predict`: an already loaded model of `onnx_path`, instead of opening it on `provider`.
    """
    reference = model if isinstance(model, np.ndarray) else reference_logits(model, images, pre, img_size, batch_size)
    if len(reference) != len(images):
        raise ValueError(f"{len(reference)} reference logits for {len(images)} parity images")
    predict = predict or open_predictor(onnx_path, provider)
    max_diff, sum_diff, agree, n, sizes = 0.0, 0.0, 0, 0, set()
    for x_u8, _ in batches(images, batch_size):
        ref = reference[n : n + len(x_u8)]
        out = predict(preprocess(x_u8, pre, img_size))
        diff = np.abs(ref - out)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.mean()) * len(x_u8)
        agree += int((ref.argmax(1) == out.argmax(1)).sum())
        n += len(x_u8)
        sizes.add(len(x_u8))
    return Parity(n, max_diff, sum_diff / n, agree / n, sorted(sizes))
