"""The recipe schema: one YAML file describes one deployable model.

This module is the single source of truth for every option. It imports no torch, so
`vitdeploy check` is fast. Stage configurations form a discriminated union on the `stage`
key: a new compression stage adds one config class here (and registers its function in
`vitdeploy.torch.stages`), and the recipe's `stages:` list maps straight to code.

Over 500 lines on purpose: every section of a recipe, its validators and its reference text stay in
one file, the single place to read what a recipe may say.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitdeploy.core.errors import RecipeError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    # A docstring under a field is its description (the generated recipe reference shows it).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)
    # Options added after a section's cache keys were first in use: hashed only when they differ
    # from their default, so adding an option leaves existing caches valid.
    added_options: ClassVar[frozenset[str]] = frozenset()

    def cache_json(self) -> str:
        """The JSON a cache key hashes: every option, except added ones left at their default."""
        defaults = {f for f in self.added_options if getattr(self, f) == type(self).model_fields[f].default}
        return self.model_dump_json(exclude=defaults)


# ---------------------------------------------------------------- model


class ModelOverrides(Section):
    """Architecture overrides passed to `timm.create_model`."""

    img_size: int | None = Field(None, gt=0)
    patch_size: int | None = Field(None, gt=0)
    num_classes: int | None = Field(None, gt=0)
    embed_dim: int | None = Field(None, gt=0)
    depth: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    mlp_ratio: float | None = Field(None, gt=0)
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    class_token: bool | None = None
    """no class token (timm: class_token=False; pair with global_pool: avg)"""
    global_pool: Literal["token", "avg"] | None = None
    """classify from the class token or the mean of the patch tokens"""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelOverrides:
        if self.embed_dim and self.num_heads and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.img_size and self.patch_size and self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be divisible by patch_size ({self.patch_size})")
        return self


class ModelSpec(Section):
    added_options: ClassVar[frozenset[str]] = frozenset({"reset_head"})
    name: str = Field(description="timm model name of the VisionTransformer family")
    overrides: ModelOverrides = ModelOverrides()
    pretrained: bool = False
    """timm/Hugging Face weights (needs internet or a filled cache)"""
    checkpoint: Path | None = Field(
        None,
        description="safetensors (a vitdeploy file rebuilds its stored architecture: pruned, distilled, Nyström) "
        "or a torch state dict loaded with weights_only=True",
    )
    reset_head: bool = False
    """transfer learning: start from the weights with a new, freshly initialised classifier (and
    distillation head) for `overrides.num_classes` (default: the dataset's class count);
    position embeddings are resampled when `overrides.img_size` differs from the weights'. The
    manifest records what was reset"""

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelSpec:
        if self.pretrained and self.checkpoint:
            raise ValueError("give either pretrained: true or a checkpoint, not both")
        return self


# ---------------------------------------------------------------- data


class Preprocess(Section):
    """Stored in the manifest: a mismatch here is the classic 'ONNX lost 7 points'."""

    added_options: ClassVar[frozenset[str]] = frozenset({"crop_pct"})

    mean: tuple[float, float, float] = CIFAR10_MEAN
    """per-channel mean subtracted after scaling to [0, 1]. With no `data.preprocess` at all, weights from
    timm (`pretrained`, or a plain timm/Hugging Face state dict) bring their pretrained_cfg mean, std and
    interpolation instead of these CIFAR-10 defaults"""
    std: tuple[float, float, float] = CIFAR10_STD
    """per-channel standard deviation"""
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic"
    """resampling when images are not the model size"""
    crop_pct: float = Field(1.0, gt=0.5, le=1)
    """share of the image kept at evaluation and in `predict`: the shorter side is resized to
    size / crop_pct and the central size x size kept (timm's evaluation transform; weights from timm
    bring their pretrained_cfg's, e.g. 0.9). 1: the whole image, resized to the model size"""

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std must be > 0")
        return v


class DataSpec(Section):
    added_options: ClassVar[frozenset[str]] = frozenset({"image_size", "holdout", "holdout_from"})
    dataset: str = Field("cifar10", description="'cifar10' or any name for an ImageFolder")
    source: Path | None = Field(None, description="archive or folder; omit to use the cache filled by `vitdeploy data get`")
    train_split: str = "train"
    """split trained and calibrated on"""
    eval_split: str = "test"
    """split every model is scored on"""
    preprocess: Preprocess = Preprocess()
    """the model's input statistics; unset: timm's pretrained_cfg ones when the weights come from timm
    (`pretrained`, or a plain timm/Hugging Face state dict), else CIFAR-10's"""
    holdout: int | None = Field(None, gt=0)
    """images of the train split set aside (a seeded choice) as the split `validation`: training,
    calibration and smoothing never read them, so `eval_split: validation` scores choices
    without touching the test split (`vitdeploy tune` does)"""
    holdout_from: str | None = None
    """the split `holdout` takes its images from (default: the train split). The eval split, for
    a model trained on every training image: choices are then scored on images no model saw,
    and the eval split means the rest of it, so what is reported was never chosen on"""
    image_size: int | None = Field(None, gt=0)
    """size images from `source` are decoded to (shorter side, then centre crop), whatever their
    own sizes and modes; default: the model's input size"""
    cache_dir: Path | None = None
    """where decoded arrays live; default $VITDEPLOY_CACHE or ~/.cache/vitdeploy"""

    @model_validator(mode="after")
    def _holdout_has_a_source(self) -> DataSpec:
        if self.holdout_from is not None and not self.holdout:
            raise ValueError("holdout_from without holdout: say how many images to set aside")
        if self.holdout_from == "validation":
            raise ValueError("holdout_from: 'validation' is the split holdout makes; name the split it comes from")
        return self

    @property
    def holdout_source(self) -> str:
        """The split the held-out images come from."""
        return self.holdout_from or self.train_split


# ---------------------------------------------------------------- stages


class TrainingConfig(Section):
    """What every training stage shares: the schedule, augmentation and device settings."""

    added_options: ClassVar[frozenset[str]] = frozenset({"max_minutes"})
    epochs: int = Field(10, gt=0, description="passes over the training images")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="wall-clock budget (training and held-out scoring): after the first epoch the epoch count, "
        "and the whole LR schedule with it, shrinks to what fits; none: always `epochs`",
    )
    batch_size: int = Field(128, gt=0, description="global batch; split across processes under torchrun")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (after warmup)")
    min_lr: float = Field(1e-5, ge=0, description="end of the cosine decay")
    weight_decay: float = Field(0.05, ge=0, description="not applied to norms, biases, tokens, position embeddings")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup, in epochs (fractions allowed)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; none: no clipping")
    augment: Literal["none", "flip_crop", "randaugment", "random_resized_crop"] = "flip_crop"
    """batched on the training device; none lets distill cache the teacher's logits;
    random_resized_crop: 8-100 % of the image at aspect 3/4-4/3, resized, and flipped (timm's
    training crop, for images larger than the model)"""
    randaugment_ops: int = Field(2, ge=0)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    train_samples: int | None = Field(None, gt=0, description="subset size; default all")
    eval_samples: int | None = Field(2000, gt=0, description="held-out images scored per epoch")
    amp: bool = Field(True, description="bf16/fp16 autocast on CUDA; ignored on CPU")
    seed: int = 0
    """data order, augmentation and subsets"""
    num_threads: int | None = Field(None, gt=0, description="CPU threads for training; default: torch's")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) exceeds lr ({self.lr})")
        return self


class FinetuneConfig(TrainingConfig):
    """Cross-entropy training of the model as it is."""

    stage: Literal["finetune"] = "finetune"


class TeacherSpec(Section):
    """Any timm model (ViT or CNN) with weights; its class count must match the student's."""

    name: str
    """timm model name"""
    overrides: dict[str, Any] = {}
    """timm.create_model keyword arguments (a vitdeploy checkpoint brings its own architecture)"""
    checkpoint: Path | None = None
    """teacher weights; a vitdeploy safetensors file rebuilds its exact architecture"""
    pretrained: bool = False


class DistillConfig(TrainingConfig):
    """Knowledge distillation from a teacher (Hinton et al.; DeiT, Touvron et al.)."""

    stage: Literal["distill"] = "distill"
    teacher: TeacherSpec
    mode: Literal["soft", "hard", "token"] = Field(
        "token",
        description="soft: KL on temperature-softened logits; hard: half CE on labels, half on the teacher's "
        "argmax; token: DeiT's distillation token and head, trained on the teacher's argmax",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="soft: weight of the distillation term against cross-entropy")
    temperature: float = Field(3.0, gt=0, description="soft: tau; the KL term is scaled by tau^2")


class PruneConfig(Section):
    """Structured pruning: removes whole heads and MLP hidden units (optionally embedding channels and head width)."""

    stage: Literal["prune"] = "prune"
    added_options: ClassVar[frozenset[str]] = frozenset({"remove_blocks", "head_dim_ratio"})
    ratio: float | None = Field(
        None, gt=0, lt=1, description="fraction of the model's parameters to remove, ranked globally over heads and MLP units"
    )
    head_ratio: float | None = Field(None, ge=0, lt=1, description="per-layer: fraction of heads removed in every block")
    mlp_ratio: float | None = Field(
        None, ge=0, lt=1, description="per-layer: fraction of MLP hidden units removed in every block"
    )
    embed_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of embedding channels removed (all blocks share them)")
    remove_blocks: int = Field(
        0, ge=0, description="whole blocks deleted first, one at a time, each the one whose absence changes the output least (KL)"
    )
    head_dim_ratio: float = Field(
        0.0, ge=0, lt=1, description="fraction of every head's width (q, k and v channels) removed, after heads and MLP units"
    )
    importance: Literal["taylor", "l1", "kl"] = "taylor"
    """taylor: abs(sum of w * dL/dw) over the structure; l1: sum of abs(w); kl: KL divergence of the
    outputs with the structure removed (one pass over the sample per structure)"""
    samples: int = Field(512, gt=0, description="training images for taylor/kl importance")
    batch_size: int = Field(64, gt=0)
    steps: int = Field(1, ge=1, description="prune in this many steps, re-scoring in between")
    min_heads: int = Field(1, ge=1, description="heads every block keeps at least")
    round_mlp_to: int = Field(8, ge=1, description="keep MLP widths a multiple of this (fast kernels)")
    seed: int = 0
    """which training images score importance"""

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        per_layer = self.head_ratio is not None or self.mlp_ratio is not None
        if self.ratio is not None and per_layer:
            raise ValueError("give either ratio (global) or head_ratio/mlp_ratio (per layer), not both")
        if self.ratio is None and not per_layer and not (self.embed_ratio or self.head_dim_ratio or self.remove_blocks):
            raise ValueError("nothing to prune: give ratio, head_ratio/mlp_ratio, embed_ratio, head_dim_ratio or remove_blocks")
        return self


class NystromConfig(Section):
    """Replace exact softmax attention by Nyström attention with `landmarks` landmarks."""

    stage: Literal["nystrom"] = "nystrom"
    landmarks: int = Field(32, gt=0, description="m: segment means of queries and keys; at most the token count")
    blocks: list[int] | None = Field(None, description="block indices to replace; default all")
    pinv_iterations: int = Field(6, ge=1, le=20, description="iterations of the MatMul-only pseudo-inverse")
    conv_kernel: int = Field(0, ge=0, description="odd kernel of a depthwise conv residual on V; 0 = none")

    @field_validator("conv_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError("conv_kernel must be odd (or 0)")
        return v


# Every stage config class; `vitdeploy.torch.stages` has one implementation per entry.
STAGE_CONFIGS: tuple[type[Section], ...] = (FinetuneConfig, DistillConfig, PruneConfig, NystromConfig)
StageConfig = Annotated[Union[STAGE_CONFIGS], Field(discriminator="stage")]  # noqa: UP007


# ---------------------------------------------------------------- ONNX steps


class ExportSpec(Section):
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript",
        description="torchscript: ~7 s and fusion-friendly; dynamo: torch.export-based, ~15x slower",
    )
    opset: int = Field(17, ge=17, le=23, description=">= 17 gives a single LayerNormalization op")
    dynamic_batch: bool = True
    """a dynamic batch axis in the ONNX graph"""
    trace_batch: int = Field(2, ge=2, description="batch >= 2 so no exporter can bake in batch 1")
    split_qkv: bool = Field(True, description="separate q/k/v Linears so ORT fuses Attention")
    parity_samples: int = Field(256, gt=0, description="evaluation images compared between PyTorch and ONNX")
    min_top1_agreement: float = Field(0.995, gt=0, le=1, description="parity gate: no artifact below this")


class OptimizeSpec(Section):
    enabled: bool = True
    """run ONNX Runtime's transformer optimizer"""
    model_type: Literal["vit"] = "vit"
    """the optimizer's model type"""
    fuse_attention: bool | Literal["auto"] = Field(
        "auto",
        description="auto: fuse unless quantizing statically (static INT8 cannot quantize a "
        "fused Attention, so its q/k/v projections would stay FP32)",
    )
    opt_level: Literal[0, 1, 2, 99] = Field(0, description="ORT graph level applied at save time")
    split_skip_layernorm: bool = Field(
        True,
        description="after fusion, turn SkipLayerNormalization back into Add + LayerNormalization "
        "(ORT 1.32's CPU kernel for it measured 4-5x slower); set false for GPU targets",
    )
    gelu_approximation: bool = Field(False, description="FastGelu (tanh form): faster, changes the numerics slightly")
    use_gpu: bool = Field(False, description="let the optimizer pick GPU-only fusions (for CUDA/TensorRT targets)")


class CalibrationSpec(Section):
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """how activation ranges are chosen"""
    samples: int = Field(256, gt=0)
    split: str = Field("train", description="must differ from the evaluation split")
    percentile: float = Field(99.999, gt=90, le=100)
    batch_size: int | None = Field(
        None,
        gt=0,
        description="images per calibration batch; none: 32 up to 128 tokens per image, else 1. MinMax ranges do not "
        "depend on it, and ONNX Runtime's calibration session holds every quantized tensor of a batch at once "
        "(ViT-S/16 at 224x224: 4.2 GB peak at 32 images per batch, 1.5 GB at 1)",
    )
    minmax_stride_batches: int | None = Field(
        None,
        gt=0,
        description="MinMax: merge ranges every N batches (ORT's CalibStridedMinMax). Not "
        "max_intermediate_outputs: in ORT 1.32 that discards the batches it clears.",
    )


ORT_QUANTIZER_OPTIONS = frozenset({
    "format", "per_channel", "reduce_range", "activation_type", "weight_type", "op_types", "weights_only_matmul",
    "attention",
    "quantize_outputs", "exclude_op_types", "store_other_weights_int8", "bias_correction", "dynamic_nodes",
})  # fmt: skip
ORT_CALIBRATION_OPTIONS = frozenset({"method", "percentile", "batch_size", "minmax_stride_batches"})


# The quantize fields only static quantization reads: refused with mode dynamic, left out of tune's dynamic candidates.
STATIC_ONLY_FIELDS = frozenset({"format", "calibration", "activation_type", "quantize_outputs", "dynamic_nodes", "attention"})


class QuantizeSpec(Section):
    added_options: ClassVar[frozenset[str]] = frozenset({"backend", "dynamic_nodes", "nncf_max_drop", "attention"})

    mode: Literal["none", "dynamic", "static"]
    """required in a quantize section, so that tuning a field never switches quantization on by itself;
    static: activation scales calibrated once; dynamic: computed per batch at run time; none: FP32 only"""
    backend: Literal["onnxruntime", "nncf"] = Field(
        "onnxruntime",
        description="who places the quantizers. nncf: NNCF's post-training quantization (transformer preset: "
        "symmetric int8 weights, asymmetric activations, its SmoothQuant and bias correction) on the standard "
        "ONNX graph; static only, needs `pip install 'vitdeploy[openvino]'` and an OpenVINO runtime in `runtimes`; "
        "of the options below it reads calibration.samples/split, exclude_nodes, keep_classifier_fp32",
    )
    nncf_max_drop: float | None = Field(
        None,
        ge=0,
        description="backend nncf: NNCF's accuracy control instead of plain PTQ: quantizers are reverted, those costing "
        "most first, until top-1 on the held-out images (`data.holdout`) drops by at most this many points; "
        "NNCF's SmoothQuant is off in this mode",
    )
    format: Literal["qdq", "qoperator"] = "qdq"
    """static only: QuantizeLinear/DequantizeLinear pairs or QLinear* operators"""
    per_channel: bool = True
    """one weight scale per output channel"""
    reduce_range: bool | Literal["auto"] = Field("auto", description="auto: on when the CPU lacks VNNI (U8S8 can saturate there)")
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    """U8S8 (uint8 activations, int8 weights) is the fast CPU form"""
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul", "Gemm"],
        description="ops to quantize; the default leaves Softmax/LayerNorm/GELU/Add in FP32",
    )
    weights_only_matmul: bool = Field(True, description="skip activation x activation MatMuls (attention scores)")
    attention: Literal["float", "scores", "int8"] = Field(
        "float",
        description="static QDQ: the attention products in INT8. scores: q·kᵀ, with q and k quantized symmetric INT8 "
        "where they leave their Linear layers, ahead of the reshapes to heads (NNCF's transformer placement); int8: "
        "attention·v too (v the same way, the Softmax output unsigned 8-bit), so that OpenVINO runs the attention in "
        "INT8; float: neither (weights_only_matmul false quantizes both at their inputs, ONNX Runtime's way)",
    )
    quantize_outputs: bool = Field(
        False,
        description="static QDQ: also quantize the outputs of the quantized ops. ORT's default; off, a MatMul "
        "whose consumer stays FP32 runs as MatMulIntegerToFloat instead of QLinearMatMul + DequantizeLinear",
    )
    keep_classifier_fp32: bool = Field(
        True, description="leave the node producing the logits in FP32 (tiny; errors there count most)"
    )
    exclude_nodes: list[str] = []
    """node names left in FP32"""
    exclude_op_types: list[str] = []
    """op types left in FP32"""
    dynamic_nodes: list[str] = Field(
        [],
        description="static only: node names (MatMul) quantized dynamically instead, their activation range taken "
        "per batch at run time: for layers a calibrated range serves badly, a middle way between static INT8 and float",
    )
    store_other_weights_int8: bool = Field(
        True,
        description="store the FP32 weights left over (pos-embed, patch-embedding Conv) as INT8 + DequantizeLinear: "
        "smaller file, same FP32 compute; the classifier stays FP32 with keep_classifier_fp32",
    )
    smooth_alpha: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="SmoothQuant: fold per-channel scales max|x|^a / max|w|^(1-a) into each LayerNorm and the "
        "Linears it feeds before export (same FP32 function; calibration images give the maxima); none: off",
    )
    bias_correction: bool = Field(
        False,
        description="after quantizing, shift each quantized MatMul's bias by the FP32 model's mean output minus the "
        "INT8 model's, per channel, on the calibration images (layer by layer)",
    )
    calibration: CalibrationSpec = CalibrationSpec()
    max_accuracy_drop: float | None = Field(None, ge=0, description="fail the build if INT8 top-1 drops more (points) than this")

    @model_validator(mode="after")
    def _fields_apply_to_mode(self) -> QuantizeSpec:
        # A field that the mode ignores would look like it did something (defaults change nothing).
        defaults = QuantizeSpec.model_construct(mode=self.mode)
        given = {f for f in self.model_fields_set - {"mode"} if getattr(self, f) != getattr(defaults, f)}
        if self.mode == "none" and given:
            raise ValueError(f"mode is none, so {', '.join(sorted(given))} would be ignored; set a mode or drop them")
        static_only = given & STATIC_ONLY_FIELDS
        if self.smooth_alpha or self.bias_correction:
            static_only -= {"calibration"}  # its images serve smoothing and bias correction in any mode
        if self.mode == "dynamic" and static_only:
            raise ValueError(f"mode is dynamic, so {', '.join(sorted(static_only))} (static only) would be ignored")
        if self.attention != "float" and self.format != "qdq":
            raise ValueError(f"attention: {self.attention} places Quantize/Dequantize pairs: it needs format qdq")
        if self.backend == "nncf":
            self._check_nncf_options(given)
        elif self.nncf_max_drop is not None:
            raise ValueError("nncf_max_drop is NNCF's accuracy control: it needs backend nncf")
        return self

    def _check_nncf_options(self, given: set[str]) -> None:
        if self.mode != "static":
            raise ValueError(f"backend nncf quantizes statically; mode is {self.mode}")
        calibration = CalibrationSpec()
        ort_only = given & ORT_QUANTIZER_OPTIONS | {
            f"calibration.{f}" for f in ORT_CALIBRATION_OPTIONS if getattr(self.calibration, f) != getattr(calibration, f)
        }
        if ort_only:
            raise ValueError(
                f"{', '.join(sorted(ort_only))}: ONNX Runtime's quantizer options, which backend nncf does not read; drop them"
            )


class EvaluateSpec(Section):
    samples: int | None = Field(None, gt=0, description="evaluation images; default: the split")
    torch: bool = True
    """also score the PyTorch model"""
    batch_size: int | None = Field(
        None, gt=0, description="default: 64 images of up to 128 tokens (32x32 models), else 8 (224x224 ViTs)"
    )
    """ONNX Runtime's arena keeps the largest batch's activations for the session's life: a
    ViT-S/16 FP32 build scoring 256 images at 224x224 peaks at 1.45 GB with 64 per batch and
    1.24 GB with 8, and is faster with 8 (35 s against 40 s; 2-core Intel Xeon with AMX)."""


class OutputSpec(Section):
    dir: Path = Path("../artifacts")
    """where artifacts and the manifest go (relative to the recipe)"""
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="artifact name")
    description: str = ""
    """free text, copied to the manifest"""
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: list[StageConfig] = []
    """PyTorch stages, in order (see Stages below)"""
    export: ExportSpec = ExportSpec()
    optimize: OptimizeSpec = OptimizeSpec()
    quantize: QuantizeSpec = QuantizeSpec(mode="none")
    evaluate: EvaluateSpec = EvaluateSpec()
    output: OutputSpec = OutputSpec()
    runtimes: list[Literal["onnxruntime", "openvino", "openvino-bf16"]] = Field(
        default_factory=lambda: ["onnxruntime"],
        min_length=1,
        description="runtimes the artifact must run on, each checked (parity and top-1) and recorded in the manifest. "
        "Naming one other than onnxruntime keeps the graph to standard ONNX operators (no ONNX Runtime fusions); "
        "openvino-bf16: OpenVINO computing the layers left in float in bfloat16 (checked on a CPU that has it)",
    )

    @model_validator(mode="after")
    def _nncf_has_a_standard_graph(self) -> Recipe:
        # NNCF reads standard ONNX operators; naming an OpenVINO runtime keeps the graph to them.
        if self.quantize.backend == "nncf" and self.runtimes == ["onnxruntime"]:
            raise ValueError(
                "quantize.backend nncf needs the standard-operator graph: add openvino to runtimes "
                "(ONNX Runtime's fused operators are unknown to NNCF)"
            )
        return self

    @model_validator(mode="after")
    def _accuracy_control_has_its_own_images(self) -> Recipe:
        if self.quantize.nncf_max_drop is not None and not self.data.holdout:
            raise ValueError("quantize.nncf_max_drop scores on held-out images, never the evaluation split: set data.holdout")
        return self

    @model_validator(mode="after")
    def _calibration_is_held_out(self) -> Recipe:
        q = self.quantize
        if q.mode == "static" and q.calibration.split == self.data.eval_split:
            raise ValueError(
                f"quantize.calibration.split '{q.calibration.split}' is the evaluation split; "
                "calibration images must be distinct from evaluation images"
            )
        return self

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"runtimes listed twice: {v}")
        return v

    @property
    def artifact_name(self) -> str:
        return self.output.name or self.name

    def digest(self) -> str:
        """sha256 of the normalized recipe: equal recipes hash equal whatever their layout.

        Values left at their defaults are not part of it, so a recipe keeps its hash when a
        new option (with a default) is added to the schema.
        """
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True)


# ---------------------------------------------------------------- loading


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make recipe paths absolute, relative to the recipe file's folder."""

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    recipe.model.checkpoint = rel(recipe.model.checkpoint)
    for stage in recipe.stages:
        if isinstance(stage, DistillConfig):
            stage.teacher.checkpoint = rel(stage.teacher.checkpoint)
    recipe.data.source = rel(recipe.data.source)
    recipe.data.cache_dir = rel(recipe.data.cache_dir)
    recipe.output.dir = rel(recipe.output.dir)  # type: ignore[assignment]
    return recipe


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk the schema along an error location to list the keys allowed there."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                stage = next((c for c in STAGE_CONFIGS if c.model_fields["stage"].default == part), None)
                current = stage
                continue
            ann = field.annotation
            args = getattr(ann, "__args__", ())
            current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def unknown_key_message(key: str, allowed: list[str] | None) -> str:
    """'unknown key; did you mean quantize? allowed: ...': the nearest allowed key first (a typo or British spelling)."""
    import difflib

    if not allowed:
        return "unknown key"
    near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return "unknown key" + (f"; did you mean {near[0]}?" if near else ";") + f" allowed: {', '.join(allowed)}"


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = unknown_key_message(str(e["loc"][-1]), _allowed_keys(Recipe, e["loc"]))
        elif e["type"] == "union_tag_invalid":
            names = ", ".join(c.model_fields["stage"].default for c in STAGE_CONFIGS)
            msg = f"unknown stage {e['input'].get('stage')!r}; allowed stages: {names}"
        elif e["type"] == "union_tag_not_found":
            names = ", ".join(c.model_fields["stage"].default for c in STAGE_CONFIGS)
            msg = f"each stage needs a 'stage:' key naming one of: {names}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        problems.append(f"{loc}: {msg}")
    return problems


def parse_recipe(data: Any, path: str | Path = "<recipe>", base: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(str(path), ["(top level): a recipe is a YAML mapping of sections"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(str(path), format_validation_error(err)) from None
    return _resolve_paths(recipe, base or Path.cwd())


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe subset, stricter still: no duplicate keys (the later one would silently
    win) and at most `MAX_ALIASES` alias uses (an alias bomb expands exponentially)."""

    MAX_ALIASES = 50

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > self.MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(None, None, f"more than {self.MAX_ALIASES} aliases (*name)", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what is wrong and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if "could not determine a constructor" in problem or "python/" in problem:
        problem = f"tag not allowed: {problem.split('tag')[-1].strip(chr(39) + ' ')}; recipes are plain YAML data"
    return f"(yaml): {problem}{where}"


MAX_RECIPE_BYTES = 1_000_000


def read_recipe_data(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(str(path), [f"(file): larger than {MAX_RECIPE_BYTES:,} bytes; not a recipe"])
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["(file): not UTF-8 text"]) from None
    except OSError as err:
        raise RecipeError(str(path), [f"(file): cannot be read ({err.strerror})"]) from None
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as err:
        raise RecipeError(str(path), [yaml_problem(err)]) from None
    except RecursionError:
        raise RecipeError(str(path), ["(yaml): nested too deeply"]) from None


def output_roots(path: Path) -> list[Path]:
    """Where a recipe file may write: below its folder's parent (the project holding recipes/
    and artifacts/) or below the working directory."""
    return [path.resolve().parent.parent, Path.cwd().resolve()]


def check_output_paths(recipe: Recipe, path: Path) -> list[str]:
    roots = output_roots(path)
    problems = []
    for field, target in (("output.dir", recipe.output.dir), ("data.cache_dir", recipe.data.cache_dir)):
        if target is not None and not any(Path(target).resolve().is_relative_to(r) for r in roots):
            allowed = " or ".join(str(r) for r in roots)
            problems.append(f"{field}: {target} lies outside where this recipe may write ({allowed} and below)")
    return problems


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be a weights file, or None: missing, or a folder (a saved model's
    directory, such as a Hugging Face `save_pretrained` folder) where one file is read."""
    if path.is_file():
        return None
    if not path.is_dir():
        return f"file not found: {path}"
    if (path / "config.json").is_file():
        return (
            f"{path} is a Hugging Face model folder; vitdeploy reads timm state dicts (.safetensors, .pth): "
            "load it with transformers and save a timm-keyed state dict, or give a timm checkpoint"
        )
    return f"{path} is a folder; give the weights file inside it (.safetensors or .pth)"


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and resolve a recipe; every user error becomes a RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["(file): no such recipe file"])
    data = read_recipe_data(path)
    recipe = parse_recipe(data, path, base=path.parent.resolve())
    missing = check_output_paths(recipe, path)
    checkpoints = {"model.checkpoint": recipe.model.checkpoint} | {
        f"stages.{i}.teacher.checkpoint": stage.teacher.checkpoint
        for i, stage in enumerate(recipe.stages)
        if isinstance(stage, DistillConfig)
    }
    missing += [f"{key}: {problem}" for key, path in checkpoints.items() if path and (problem := checkpoint_problem(path))]
    if recipe.data.source and not recipe.data.source.exists():
        missing.append(f"data.source: not found: {recipe.data.source}")
    if missing:
        raise RecipeError(str(path), missing)
    return recipe
