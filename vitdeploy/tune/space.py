"""What `tune` tries: quantization settings, each a small change to the recipe's own.

Why these: on the reference teacher with outlier channels after its LayerNorms (as real ViTs
have), the shipped static INT8 recipe loses 2.87 points and the same recipe with SmoothQuant
(alpha 0.5) none; on another CPU, static INT8 does not pay at all while dynamic may. Which one
wins depends on the model and the machine, so each is built, scored and timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitdeploy.recipe.schema import STATIC_ONLY_FIELDS, QuantizeSpec, Recipe

DEFAULT_CALIBRATION = {"method": "minmax", "samples": 256}


@dataclass(frozen=True)
class Candidate:
    """One setting to build: `quantize` replaces the recipe's quantize section; `source` is the
    recipe whose model and stages it starts from (a pruned or distilled student), or None for
    the recipe being tuned."""

    name: str
    idea: str
    quantize: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    student: str | None = None  # the student recipe's name, with `source`

    @property
    def is_float(self) -> bool:
        return self.quantize.get("mode", "none") == "none"


def shared_settings(recipe: Recipe) -> dict[str, Any]:
    """The recipe's own quantization choices that every candidate keeps (which ops, what stays
    float, reduce_range), without its mode, its budget, and whatever the search varies."""
    spec = recipe.quantize
    if spec.mode == "none":
        return {}
    # The static-only fields too: the search sets them per candidate (a dynamic one has none).
    varied = {"mode", "max_accuracy_drop", "smooth_alpha", "bias_correction", "per_channel"} | STATIC_ONLY_FIELDS
    return {k: v for k, v in spec.model_dump(mode="json", exclude_defaults=True).items() if k not in varied}


def calibration_of(recipe: Recipe) -> dict[str, Any]:
    spec = recipe.quantize
    if spec.mode == "static":
        return spec.calibration.model_dump(mode="json", exclude_defaults=True) | {"split": spec.calibration.split}
    return dict(DEFAULT_CALIBRATION)


def nncf_settings(recipe: Recipe) -> dict[str, Any]:
    """NNCF's post-training quantization, keeping what the recipe leaves in float and its
    calibration images (NNCF reads no other option of ONNX Runtime's quantizer)."""
    kept = {k: v for k, v in shared_settings(recipe).items() if k in {"exclude_nodes", "keep_classifier_fp32"}}
    cal = {k: v for k, v in calibration_of(recipe).items() if k in {"samples", "split"}}
    return kept | {"mode": "static", "backend": "nncf", "calibration": cal}


def dynamic_op_types(shared: dict[str, Any]) -> list[str]:
    """The recipe's op types, and ONNX Runtime's fused Attention: dynamic INT8 runs it as
    QAttention. Left out, the reference teacher's dynamic candidate ran at 0.96x / 1.21x FP32
    where the shipped `vit_dynamic_int8` recipe, with it, ran at 1.26x / 1.67x (batch 1 / 16,
    2-core Intel Xeon with AMX). A standard-operator graph has no fused Attention to quantize."""
    op_types = list(shared.get("op_types", QuantizeSpec.model_fields["op_types"].get_default(call_default_factory=True)))
    return op_types if "Attention" in op_types else [*op_types, "Attention"]


def candidates(recipe: Recipe, smooth_alphas: tuple[float, ...] = (0.5, 0.8), nncf: bool = False) -> list[Candidate]:
    """The float baseline, then every quantization setting the search builds, cheapest first;
    `nncf`: also NNCF's quantizer (for OpenVINO targets, where its placement can run faster)."""
    shared, cal = shared_settings(recipe), calibration_of(recipe)

    def static(**changes: Any) -> dict[str, Any]:
        changes_cal = changes.pop("calibration", {})
        return shared | {"mode": "static", "format": "qdq", "per_channel": True, "calibration": cal | changes_cal} | changes

    found = [
        Candidate("fp32", "no quantization: ONNX Runtime's fused float graph", {"mode": "none"}),
        Candidate("dynamic", "dynamic INT8: activation ranges computed per batch at run time, fused attention as QAttention",
                  shared | {"mode": "dynamic", "per_channel": True, "op_types": dynamic_op_types(shared)}),
        Candidate("static", "static INT8 (QDQ), per-channel weights, MinMax ranges", static()),
        Candidate("static-per-tensor", "static INT8 with one scale per weight tensor (fewer scales to apply)",
                  static(per_channel=False)),
        Candidate("static-percentile", "static INT8 with ranges clipped at the 99.999th percentile",
                  static(calibration={"method": "percentile"})),
        *[
            Candidate(f"static-smooth{a:g}", f"SmoothQuant (alpha {a:g}) before static INT8: outlier channels moved into weights",
                      static(smooth_alpha=a))
            for a in smooth_alphas
        ],
        Candidate("static-bias-correction", "static INT8, then each layer's mean output error subtracted from its bias",
                  static(bias_correction=True)),
    ]  # fmt: skip
    if recipe.optimize.fuse_attention is not True:  # ONNX Runtime's fused Attention hides the products
        found.append(Candidate("static-attention-int8", "static INT8 with the attention products in INT8 too (q, k, v "
                               "quantized where they leave their Linear layers)", static(attention="int8")))  # fmt: skip
    if nncf:
        found.append(Candidate("nncf", "NNCF's post-training quantization (transformer preset): its own quantizer "
                                       "placement, SmoothQuant and bias correction", nncf_settings(recipe)))  # fmt: skip
    for c in found:
        QuantizeSpec(**c.quantize)  # every candidate is a valid recipe section
    return found


def student_candidates(student: Recipe, path: Path, nncf: bool = False) -> list[Candidate]:
    """The same settings on a student's model (its own stages), named after the student."""
    return [
        replace(c, name=f"{student.name}.{c.name}", idea=f"{student.name}: {c.idea}", source=path, student=student.name)
        for c in candidates(student, nncf=nncf)
    ]
