"""How sure tune is: a candidate's validation loss with its interval, paired image by image.

Why paired: an INT8 file and its FP32 file get most images right or wrong together, so the
uncertainty of their difference is that of the images on which they disagree. Two independent
binomial intervals would add each file's own sampling spread (about 1.2 points each on 5,000
images at 77 %) and call every candidate uncertain; the paired interval is what tells a
candidate that really costs 0.3 points from one that costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Z95 = 1.959964  # two-sided 95 %


@dataclass(frozen=True)
class DropInterval:
    """Top-1 points lost against the reference on the same images, with its 95 % interval."""

    drop: float
    lowest: float
    highest: float
    images: int

    def straddles(self, budget: float) -> bool:
        return self.lowest < budget < self.highest

    def describe(self) -> str:
        return f"{self.drop:.2f} ({self.lowest:.2f} to {self.highest:.2f})"


def paired_drop(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> DropInterval:
    """The candidate's loss in points against `reference` (predicted classes on the same images),
    with the Wald interval of a paired difference of proportions (McNemar's counts)."""
    right_ref, right_cand = reference == labels, candidate == labels
    n = len(labels)
    only_ref = int((right_ref & ~right_cand).sum())  # images only the reference gets right
    only_cand = int((right_cand & ~right_ref).sum())
    drop = (only_ref - only_cand) / n
    variance = (only_ref + only_cand - (only_ref - only_cand) ** 2 / n) / n**2
    half = Z95 * math.sqrt(max(variance, 0.0))
    # Few disagreements: at least one image's worth either side, so zero flips is not certainty.
    half = max(half, 1 / n)
    return DropInterval(round(100 * drop, 2), round(100 * (drop - half), 2), round(100 * (drop + half), 2), n)


def predicted_classes(file: Path, provider: str, images, batch: int) -> np.ndarray:
    """The class `file` predicts for each image, with the preprocessing it carries."""
    import onnx

    from vitdeploy.data.datasets import batches, preprocess
    from vitdeploy.onnx.graph import read_preprocess
    from vitdeploy.runtime.sessions import open_predictor

    pre, size = read_preprocess(onnx.load(str(file), load_external_data=False))
    predict = open_predictor(file, provider)
    return np.concatenate([predict(preprocess(x, pre, size)).argmax(1) for x, _ in batches(images, batch)])
