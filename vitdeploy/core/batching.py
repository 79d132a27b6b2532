"""How many images go through a model at once, by its token count: one rule each for
evaluation and calibration, used by the build, `tune`, `sensitivity` and `bench`.

Why by tokens, not image size: memory grows with the tokens an image becomes (a 224x224 ViT with
patch 32 has 50, with patch 16 197), and the same model must get the same batch everywhere.
"""

from __future__ import annotations

SMALL_TOKENS = 128  # up to this many tokens per image, a model is small enough for large batches


def evaluation_batch(tokens: int | None, asked: int | None = None) -> int:
    """`asked` (the recipe's evaluate.batch_size), or 64 images of up to 128 tokens, else 8.
    Unknown tokens (None): a small model."""
    if asked is not None:
        return asked
    return 64 if (tokens or 0) <= SMALL_TOKENS else 8


def calibration_batch(tokens: int | None, asked: int | None = None) -> int:
    """`asked` (quantize.calibration.batch_size), or 32 images of up to 128 tokens, else 1.

    Why: ONNX Runtime's calibration session keeps every quantized tensor of a batch alive at
    once, and its arena keeps the peak. Measured on ViT-S/16 at 224x224 (197 tokens) with 256
    images, 2-core AMD EPYC: 1.5 GB peak RSS at 1 image per batch, 2.0 GB at 4, 4.2 GB at 16,
    7.3 GB at 32, in the same 27-30 s. The ranges are the same either way: MinMax reduces each
    batch and then takes the minimum and maximum over batches."""
    if asked is not None:
        return asked
    return 32 if (tokens or 0) <= SMALL_TOKENS else 1
