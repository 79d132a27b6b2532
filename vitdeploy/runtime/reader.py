"""Images to model inputs, batch by batch: numpy and pillow only.

`batches_from` decodes in a reader thread, at most `depth` batches ahead of the runtime, so
memory stays flat however many images a folder holds. The runtime releases the GIL while it
computes, and plain colour JPEGs skip pillow's Python header parsing (`imaging.decode_jpeg`),
so reading overlaps inference. (A reader process measured slower on two cores: pickling and
the pipe cost more than the GIL does.)
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitdeploy.core.contract import InputContract
from vitdeploy.core.errors import UserError
from vitdeploy.runtime.imaging import IMAGE_SUFFIXES, ImageError, decode, normalize


@dataclass(frozen=True)
class Failure:
    path: Path
    reason: str


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


def normalizer(contract: InputContract) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC batch -> the model's input, as its input contract describes it."""
    found = (contract.layout, contract.scale, contract.dtype)
    if found != ("NCHW", "1/255", "float32"):
        raise UserError(f"preprocess.json: layout/scale/dtype {'/'.join(map(str, found))} is not NCHW/1/255/float32")
    mean, std = np.asarray(contract.mean, np.float32), np.asarray(contract.std, np.float32)

    def normalize_batch(images: np.ndarray) -> np.ndarray:
        return normalize(images, mean, std)

    return normalize_batch


Batch = tuple[list[Path], np.ndarray | None, list[Failure]]


def read_batches(paths: Iterator[Path], contract: InputContract, batch: int) -> Iterator[Batch]:
    """(paths, model input, failures) per batch of readable images."""
    size, interpolation = contract.size, contract.interpolation
    normalize = normalizer(contract)
    done = False
    while not done:
        names, failures = [], []
        images = np.empty((batch, size, size, 3), np.uint8)  # decoded straight into the batch
        while len(names) < batch:
            path = next(paths, None)
            if path is None:
                done = True
                break
            try:
                images[len(names)] = decode(path, size, interpolation, contract.crop_pct)
                names.append(path)
            except ImageError as err:
                failures.append(Failure(path, str(err)))
            except OSError as err:
                failures.append(Failure(path, f"could not be read ({err.strerror or err})"))
        if names or failures:
            yield names, normalize(images[: len(names)]) if names else None, failures


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


def batches_from(inputs: list[Path], contract: InputContract, batch: int, depth: int = 2) -> Iterator[Batch]:
    """Batches of the images in `inputs` (files, and folders walked in sorted order), read ahead."""
    for item in inputs:
        if not item.exists():
            raise UserError(f"{item}: no such file or folder")
    normalizer(contract)  # refuse an unusable preprocess.json before the reader starts
    return prefetched(read_batches(image_paths(inputs), contract, batch), depth)
