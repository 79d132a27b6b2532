"""SmoothQuant for ViTs: move activation outliers into the weights before INT8.

A LayerNorm's output feeds Linears (norm1 -> q/k/v, norm2 -> fc1). Dividing the norm's scale
and shift by a per-channel factor s and multiplying the Linears' input columns by the same s
leaves the function unchanged, while the activation range per channel becomes
max|x_j| / s_j and the weights' max|w_j| * s_j. With s_j = max|x_j|^α / max|w_j|^(1-α), α
between 0 and 1 decides how much of the range moves (Xiao et al., SmoothQuant, 2023). The
maxima come from calibration images. The result is an FP32 model, exported as usual; INT8
activations then lose less to a few large channels.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class Batches(Protocol):
    """Images whose slices are preprocessed NCHW batches (a tensor, or `PreprocessedImages`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray | torch.Tensor: ...


def norm_consumers(model: nn.Module) -> list[tuple[nn.LayerNorm, list[nn.Linear]]]:
    """Every (LayerNorm, Linears reading only its output) pair in the model's blocks."""
    pairs = []
    for blk in model.blocks:
        attn = blk.attn
        qkv = [attn.qkv] if hasattr(attn, "qkv") else [attn.q, attn.k, attn.v]
        pairs.append((blk.norm1, qkv))
        pairs.append((blk.norm2, [blk.mlp.fc1]))
    return pairs


@torch.no_grad()
def activation_maxima(model: nn.Module, images: Batches, batch_size: int) -> list[torch.Tensor]:
    """Per-channel max |output| of every norm in `norm_consumers`, over the images (a tensor,
    or anything whose slices are preprocessed NCHW batches)."""
    pairs = norm_consumers(model)
    maxima = [torch.zeros(norm.normalized_shape[0]) for norm, _ in pairs]
    hooks = []
    for i, (norm, _) in enumerate(pairs):

        def record(module, inputs, output, i=i) -> None:
            maxima[i] = torch.maximum(maxima[i], output.detach().abs().flatten(0, -2).amax(0).cpu())

        hooks.append(norm.register_forward_hook(record))
    try:
        model.eval()
        device = next(model.parameters()).device
        for start in range(0, len(images), batch_size):
            model(torch.as_tensor(images[start : start + batch_size]).to(device))
    finally:
        for h in hooks:
            h.remove()
    return maxima


@torch.no_grad()
def smooth(model: nn.Module, images: Batches, alpha: float, batch_size: int = 64) -> list[float]:
    """Fold SmoothQuant scales into the model in place; returns each norm's activation range ratio
    (max over channels / median over channels) after smoothing."""
    spreads = []
    for (norm, linears), act in zip(norm_consumers(model), activation_maxima(model, images, batch_size), strict=True):
        weight = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
        s = (act.clamp_min(1e-5) ** alpha / weight.clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
        s = s.to(norm.weight.device)
        norm.weight.div_(s)
        if norm.bias is not None:
            norm.bias.div_(s)
        for lin in linears:
            lin.weight.mul_(s)
        smoothed = act.to(s.device) / s
        spreads.append(float(smoothed.max() / smoothed.median().clamp_min(1e-12)))
    return spreads
