"""Classify images with a bundle: onnxruntime, numpy and pillow, no torch.

Images stream in batches from `vitdeploy.runtime.reader`, decoded in a reader thread while the
runtime works, at most a few batches ahead, so memory stays flat however many images a folder
holds. Images that cannot be read are reported by name and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitdeploy.core.errors import UserError
from vitdeploy.runtime.bundle import Bundle
from vitdeploy.runtime.reader import Failure, batches_from
from vitdeploy.runtime.sessions import ProviderUnavailable, open_predictor

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    path: Path
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    truth: str | None  # the parent folder's name when it is one of the bundle's labels


@dataclass
class Tally:
    images: int = 0
    failed: int = 0
    labelled: int = 0
    correct: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def top1(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


# ---------------------------------------------------------------- runtime


def bundle_predictor(bundle: Bundle, provider: str, threads: int | None) -> Runner:
    """The bundle's model on ONNX Runtime (cpu, cuda, tensorrt) or OpenVINO's CPU runtime."""
    expected = bundle.manifest["model"].get("input", {})
    if expected.get("dtype", "float32") != "float32":
        raise UserError(f"{bundle.model.name}: input type {expected['dtype']} is not float32; predict feeds float32 images")
    try:
        predictor = open_predictor(bundle.model, provider, threads)
    except ProviderUnavailable as err:  # never a silent run on another provider than the one asked for
        raise UserError(f"--provider {provider}: {err}") from None
    shape = predictor.input_shape
    size = bundle.contract.size
    if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=True)):
        raise UserError(f"{bundle.model.name}: input shape {list(shape)} does not take 3x{size}x{size} images (preprocess.json)")
    return predictor


def int8_saturation_risk(quantization: dict | None, isa: dict[str, bool]) -> str | None:
    """Why ONNX Runtime's INT8 kernels may lose accuracy on this CPU, or None.

    Without VNNI, ONNX Runtime's x86 kernels multiply uint8 activations by int8 weights with
    an instruction that saturates pairs of products at 16 bits; weights kept to 7 bits
    (`reduce_range`) or signed activations avoid it. A build decides this for its own CPU.
    """
    if not quantization or not isa.get("avx2"):  # not quantized, or not an x86 CPU
        return None
    if (quantization.get("activation_type"), quantization.get("weight_type")) != ("uint8", "int8"):
        return None
    if quantization.get("reduce_range") or any(isa.get(k) for k in ("avx512_vnni", "avx_vnni", "amx_int8")):
        return None
    return (
        "this CPU has no VNNI and the model's INT8 weights use the full 8-bit range: ONNX Runtime's "
        "uint8 x int8 products may saturate here; check top-1 on this CPU, or rebuild with "
        "quantize.reduce_range: true"
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(
    bundle: Bundle,
    inputs: list[Path],
    run: Runner,
    batch: int = 16,
    top_k: int = 5,
    prefetch: int = 2,
    on_batch: Callable[[int], None] | None = None,
    tally: Tally | None = None,
) -> Iterator[Prediction | Failure]:
    """Predictions (and failures) in input order, streamed batch by batch."""
    import time

    tally = tally if tally is not None else Tally()
    labels = bundle.labels
    known = set(labels)
    k = min(top_k, len(labels))
    started = time.perf_counter()
    batches = batches_from(inputs, bundle.contract, batch, prefetch)
    for names, x, failures in batches:
        for f in failures:
            tally.failed += 1
            tally.failures.append(f)
            yield f
        if on_batch:
            on_batch(len(names) + len(failures))
        if x is None:
            continue
        probs = softmax(run(x))
        if probs.shape != (len(names), len(labels)):
            raise UserError(f"{bundle.model.name}: output shape {probs.shape} does not match {len(labels)} labels")
        order = np.argsort(-probs, axis=1)[:, :k]
        top_p = np.take_along_axis(probs, order, axis=1).tolist()  # Python floats, one call per batch
        for path, idx, p in zip(names, order.tolist(), top_p, strict=True):
            folder = path.parent.name
            truth = folder if folder in known else None
            top = tuple(labels[i] for i in idx)
            if truth is not None:
                tally.labelled += 1
                tally.correct += int(top[0] == truth)
            yield Prediction(path, top, tuple(p), truth)
        tally.images += len(names)
    tally.seconds = time.perf_counter() - started
