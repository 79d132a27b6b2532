"""Classify images with a bundle: onnxruntime, numpy and pillow, no torch.

Images stream through a bounded pipeline: a reader thread decodes and preprocesses the next
batches while the runtime works on the current one (pillow releases the GIL while it
decodes), and at most `prefetch` batches wait in between, so memory stays flat however
many images a folder holds. Images that cannot be read are reported by name and skipped.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitdeploy.bundle import Bundle
from vitdeploy.errors import UserError
from vitdeploy.imaging import IMAGE_SUFFIXES, ImageError, decode

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    path: Path
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    truth: str | None  # the parent folder's name when it is one of the bundle's labels


@dataclass(frozen=True)
class Failure:
    path: Path
    reason: str


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


# ---------------------------------------------------------------- inputs


def image_paths(inputs: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders walked in sorted order for files with an image suffix."""
    for item in inputs:
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                        yield Path(root) / name
        elif item.is_file():
            yield item
        else:
            raise UserError(f"{item}: no such file or folder")


def normalizer(pre: dict) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC batch -> the model's input, as preprocess.json describes it."""
    found = (pre.get("layout", "NCHW"), pre.get("scale", "1/255"), pre.get("dtype", "float32"))
    if found != ("NCHW", "1/255", "float32"):
        raise UserError(f"preprocess.json: layout/scale/dtype {'/'.join(map(str, found))} is not NCHW/1/255/float32")
    try:
        mean, std = np.asarray(pre["mean"], np.float32).reshape(3), np.asarray(pre["std"], np.float32).reshape(3)
        int(pre["size"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"preprocess.json: mean, std (3 values each) and size are required ({err})") from None

    def normalize(images: np.ndarray) -> np.ndarray:
        # The build's arithmetic, step for step: the same float32 inputs, the same top-1.
        x = images.astype(np.float32) / 255.0
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))

    return normalize


Batch = tuple[list[Path], np.ndarray | None, list[Failure]]


def read_batches(paths: Iterator[Path], pre: dict, batch: int) -> Iterator[Batch]:
    """(paths, model input, failures) per batch of readable images."""
    size, interpolation = int(pre["size"]), pre.get("interpolation", "bicubic")
    normalize = normalizer(pre)
    done = False
    while not done:
        names, arrays, failures = [], [], []
        while len(arrays) < batch:
            path = next(paths, None)
            if path is None:
                done = True
                break
            try:
                arrays.append(decode(path, size, interpolation))
                names.append(path)
            except ImageError as err:
                failures.append(Failure(path, str(err)))
            except OSError as err:
                failures.append(Failure(path, f"could not be read ({err.strerror or err})"))
        if arrays or failures:
            yield names, normalize(np.stack(arrays)) if arrays else None, failures


def prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """The same batches, produced by a reader thread at most `depth` batches ahead."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(end)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)

    reader = threading.Thread(target=produce, name="vitdeploy-reader", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------- runtime


def runner(bundle: Bundle, provider: str, threads: int | None) -> Runner:
    """The bundle's model on ONNX Runtime (cpu, cuda, tensorrt) or OpenVINO's CPU runtime."""
    expected = bundle.manifest["model"].get("input", {})
    if expected.get("dtype", "float32") != "float32":
        raise UserError(f"{bundle.model.name}: input type {expected['dtype']} is not float32; predict feeds float32 images")
    if provider == "openvino":
        from vitdeploy.openvino_runtime import missing_reason
        from vitdeploy.openvino_runtime import predictor as openvino_predictor

        reason = missing_reason()
        if reason:
            raise UserError(f"--provider openvino: {reason}")
        return openvino_predictor(bundle.model, threads)
    if provider not in PROVIDERS:
        raise UserError(f"--provider {provider}: choose from {', '.join([*PROVIDERS, 'openvino'])}")
    import onnxruntime as ort

    ep = PROVIDERS[provider]
    if ep not in ort.get_available_providers():
        raise UserError(f"--provider {provider}: {ep} is not available in this onnxruntime ({ort.__version__})")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(bundle.model), opts, providers=[ep])
    except Exception as err:  # ORT raises its own exception types for invalid graphs
        raise UserError(f"{bundle.model.name}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
    inp = session.get_inputs()[0]
    shape = inp.shape
    size = int(bundle.preprocess["size"])
    if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, size, size), strict=True)):
        raise UserError(f"{bundle.model.name}: input shape {shape} does not take 3x{size}x{size} images (preprocess.json)")
    name = inp.name
    return lambda x: session.run(None, {name: x})[0]


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
    for names, x, failures in prefetched(read_batches(image_paths(inputs), bundle.preprocess, batch), prefetch):
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
        for path, p, idx in zip(names, probs, order, strict=True):
            truth = path.parent.name if path.parent.name in known else None
            top = tuple(labels[i] for i in idx)
            if truth is not None:
                tally.labelled += 1
                tally.correct += int(top[0] == truth)
            yield Prediction(path, top, tuple(float(p[i]) for i in idx), truth)
        tally.images += len(names)
    tally.seconds = time.perf_counter() - started
