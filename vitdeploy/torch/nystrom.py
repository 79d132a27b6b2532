"""Nyström attention (Xiong et al., 2021) as a drop-in for a trained timm Attention.

softmax(Q Kᵀ) V is approximated through m landmarks: segment means of the queries and keys.
With F = softmax(Q K̃ᵀ) (N×m), A = softmax(Q̃ K̃ᵀ) (m×m) and B = softmax(Q̃ Kᵀ) (m×N), the output
is F A⁺ (B V), linear in N instead of quadratic. It reuses the block's trained q/k/v and
projection weights, so a short fine-tune recovers what the approximation loses.

Three details matter for deployment:
- Segments are uneven when N is not a multiple of m (65 tokens with a class token, 66 with a
  distillation token): the segment-mean matrix is a constant (m×N) buffer built once.
- A⁺ is the iterative Moore-Penrose inverse (Razavi et al.), six MatMul-only iterations, so the
  ONNX graph needs no pinv or SVD operator.
- Its initial scaling is computed per sample and head. Public implementations take the maximum
  over the whole batch, which makes a sample's output depend on its batch-mates.

The export rule beside the module folds the softmax scale into the query weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from torch import nn

from vitdeploy.core.errors import UserError
from vitdeploy.torch.registry import register_attention, register_export_rule


def segment_mean_matrix(num_tokens: int, landmarks: int) -> torch.Tensor:
    """(landmarks × num_tokens) matrix whose row i averages segment i; segments differ by ≤ 1 token."""
    if not 0 < landmarks <= num_tokens:
        raise UserError(f"nystrom: landmarks must be between 1 and the token count ({num_tokens}), got {landmarks}")
    bounds = [round(i * num_tokens / landmarks) for i in range(landmarks + 1)]
    matrix = torch.zeros(landmarks, num_tokens)
    for i in range(landmarks):
        matrix[i, bounds[i] : bounds[i + 1]] = 1.0 / (bounds[i + 1] - bounds[i])
    return matrix


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of each (…, m, m) matrix by a cubically converging iteration.

    Z₀ = Aᵀ / (‖A‖₁ ‖A‖∞), per matrix: the norms reduce over the last two axes only, so each
    sample and head is scaled by itself alone. The update Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ)))
    is expanded to ¼ (13Z − 15ZB + 7ZB² − ZB³) with B = AZ: scalars instead of identity
    matrices, so the exported graph holds no m×m constant per iteration.
    """
    absolute = a.abs()
    max_col_sum = absolute.sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)
    max_row_sum = absolute.sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
    z = a.transpose(-1, -2) / (max_col_sum * max_row_sum)
    for _ in range(iterations):
        b = a @ z
        zb = z @ b
        zb2 = zb @ b
        z = 0.25 * (13 * z - 15 * zb + 7 * zb2 - zb2 @ b)
    return z


class NystromAttention(nn.Module):
    """timm Attention's interface and weights, Nyström-approximated softmax attention."""

    def __init__(self, attn: Attention, landmarks: int, num_tokens: int, pinv_iterations: int = 6, conv_kernel: int = 0) -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None or not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            raise UserError("nystrom supports plain timm Attention (no gate, no scale_norm)")
        self.num_heads, self.head_dim, self.attn_dim, self.scale = attn.num_heads, attn.head_dim, attn.attn_dim, attn.scale
        self.landmarks, self.pinv_iterations, self.conv_kernel = landmarks, pinv_iterations, conv_kernel
        self.qkv, self.proj = attn.qkv, attn.proj
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.attn_drop, self.proj_drop = attn.attn_drop, attn.proj_drop
        self.register_buffer("segment_means", segment_mean_matrix(num_tokens, landmarks), persistent=False)
        self.conv = None
        if conv_kernel:
            # Depthwise convolution over the token axis on V (Nyströmformer's skip path). Zero at
            # first, so the replacement starts as pure Nyström and fine-tuning learns the residual.
            self.conv = nn.Conv2d(
                self.num_heads, self.num_heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=self.num_heads, bias=False
            )
            nn.init.zeros_(self.conv.weight)

    @property
    def attention_spec(self) -> dict[str, Any]:
        """What `vitdeploy.core.architecture` stores for this block."""
        return {
            "kind": "nystrom",
            "landmarks": self.landmarks,
            "pinv_iterations": self.pinv_iterations,
            "conv_kernel": self.conv_kernel,
        }

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("Nyström attention takes no mask")
        b, n, _ = x.shape
        if n != self.segment_means.shape[1]:
            raise ValueError(f"built for {self.segment_means.shape[1]} tokens, got {n}")
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.scale != 1.0:  # folded into the weights at export
            q = q * self.scale
        q_landmarks = self.segment_means @ q  # (b, h, m, d)
        k_landmarks = self.segment_means @ k
        kernel_1 = F.softmax(q @ k_landmarks.transpose(-1, -2), dim=-1)  # (b, h, n, m)
        kernel_2 = F.softmax(q_landmarks @ k_landmarks.transpose(-1, -2), dim=-1)  # (b, h, m, m)
        kernel_3 = F.softmax(q_landmarks @ k.transpose(-1, -2), dim=-1)  # (b, h, m, n)
        kernel_3 = self.attn_drop(kernel_3)
        out = (kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)) @ (kernel_3 @ v)
        if self.conv is not None:
            out = out + self.conv(v)
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(out))


@register_attention("nystrom")
def build_nystrom(attn: Attention, params: dict[str, Any], num_tokens: int) -> NystromAttention:
    return NystromAttention(attn, num_tokens=num_tokens, **params)


@register_export_rule(NystromAttention)
def fold_query_scale(module: NystromAttention) -> NystromAttention:
    """Export rule: fold the softmax scale into the query rows of qkv (one Mul less per block).

    Only valid without a query norm, which would see the unscaled queries.
    """
    if not isinstance(module.q_norm, nn.Identity):
        return module
    folded = copy.deepcopy(module)
    rows = slice(0, module.attn_dim)
    with torch.no_grad():
        folded.qkv.weight[rows] *= module.scale
        if folded.qkv.bias is not None:
            folded.qkv.bias[rows] *= module.scale
    folded.scale = 1.0
    return folded
