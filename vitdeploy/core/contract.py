"""The input contract: what a model expects of an image, as one typed, versioned record.

It travels with the model, as timm's `pretrained_cfg` does: in the build manifest
(`preprocess`), inside the ONNX file's metadata (`vitdeploy.preprocess`, so a bare artifact
describes its own input) and in a bundle's preprocess.json. Every reader goes through
`InputContract.from_record`, which accepts both spellings of the size (`img_size` in
manifests and ONNX metadata, `size` in bundles) and refuses a record newer than it knows.
A mismatch here is the classic "ONNX lost 7 points".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vitdeploy.core.errors import UserError

# Records without a version are version 1. Version 2 adds crop_pct; a record is written with
# the lowest version that describes it, so models that keep the whole image stay readable by
# predictors that know version 1 only.
CONTRACT_VERSION = 2
RESIZE_RULE = "shorter side to size, then center crop; no change when the image is already size x size"
CROP_RULE = "shorter side to floor(size / crop_pct), then the central size x size"


INPUT_NAME = "pixel_values"  # every exported model's one input, as Hugging Face names it


@dataclass(frozen=True)
class InputContract:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    classes: tuple[str, ...] = ()
    input_name: str = INPUT_NAME
    layout: str = "NCHW"
    scale: str = "1/255"
    dtype: str = "float32"
    color: str = "RGB"
    crop_pct: float = 1.0  # share of the resized image kept (timm's evaluation crop); 1: all of it

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str) -> InputContract:
        """The contract in a manifest, ONNX metadata or preprocess.json; `where` names it in errors."""
        version = record.get("version", 1)
        if not isinstance(version, int) or version > CONTRACT_VERSION:
            raise UserError(f"{where}: input contract version {version} is newer than this vitdeploy reads ({CONTRACT_VERSION})")
        try:
            size = int(record["size"] if "size" in record else record["img_size"])
            mean = tuple(float(v) for v in record["mean"])
            std = tuple(float(v) for v in record["std"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{where}: mean, std (3 values each) and size are required ({err})") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or size < 1:
            raise UserError(f"{where}: mean and std need 3 values each (std > 0) and size must be >= 1")
        optional = {k: record[k] for k in ("interpolation", "input_name", "layout", "scale", "dtype", "color") if k in record}
        classes = tuple(str(c) for c in record.get("classes") or ())
        try:
            crop_pct = float(record.get("crop_pct", 1.0))
        except (TypeError, ValueError):
            crop_pct = 0.0
        if not 0 < crop_pct <= 1:
            raise UserError(f"{where}: crop_pct must be in (0, 1], not {record.get('crop_pct')!r}")
        return cls(size=size, mean=mean, std=std, classes=classes, crop_pct=crop_pct, **optional)  # type: ignore[arg-type]

    def with_input(self, name: str, dtype: str) -> InputContract:
        """The contract with the input name and type the exported graph declares."""
        return replace(self, input_name=name, dtype=dtype)

    def manifest_record(self) -> dict[str, Any]:
        """The build manifest's and ONNX metadata's spelling (keys and order fixed: artifacts
        carry it, and they rebuild byte for byte)."""
        return {
            "input_name": self.input_name,
            "layout": self.layout,
            "img_size": self.size,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            **({"crop_pct": self.crop_pct} if self.crop_pct < 1 else {}),
            "classes": list(self.classes),
        }

    def bundle_record(self) -> dict[str, Any]:
        """preprocess.json: everything a device needs to feed the model, the resize rule spelled out."""
        return {
            "version": 2 if self.crop_pct < 1 else 1,
            "input_name": self.input_name,
            "dtype": self.dtype,
            "layout": self.layout,
            "size": self.size,
            **({"crop_pct": self.crop_pct} if self.crop_pct < 1 else {}),
            "resize": CROP_RULE if self.crop_pct < 1 else RESIZE_RULE,
            "interpolation": self.interpolation,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class ArtifactRecord:
    file: str
    sha256: str
    bytes: int | None = None


def artifact_top1(top1: Mapping[str, float]) -> float | None:
    """The one rule for a build's own top-1 (the build's scores by file: "onnx_fp32", "onnx_int8"):
    its INT8 model's when it quantized, else its FP32 file's."""
    return top1.get("onnx_int8", top1.get("onnx_fp32"))


@dataclass(frozen=True)
class StageRecord:
    stage: str  # "prune", "distill", ...
    config: dict[str, Any]


@dataclass(frozen=True)
class BuildManifest:
    """The build manifest (`NAME.json` beside the artifacts), typed for what reads it after the
    build: packaging, the report, tune and the CLI. `raw` keeps the whole record as written;
    manifests of earlier releases read too (what they lack is None or empty)."""

    name: str
    input: InputContract
    artifacts: dict[str, ArtifactRecord]  # role ("onnx": the recipe's artifact, "fp32_onnx", ...) -> file
    top1: dict[str, float]  # "torch", "onnx_fp32", "onnx_int8"
    split: str | None
    images: int | None
    runtime_top1: dict[str, float | None]  # per runtime the build checked
    quantize: dict[str, Any] | None
    recipe_sha256: str | None
    architecture: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    stages: tuple[StageRecord, ...] = ()
    sizes: dict[str, int] = field(default_factory=dict)  # role -> bytes
    parameters: int | None = None
    macs: int | None = None
    dataset: str | None = None  # the recipe's data.dataset
    environment: dict[str, Any] = field(default_factory=dict)  # where and with what it was built
    seconds: float | None = None  # the whole build
    parity_agreement: float | None = None  # the exported file's top-1 agreement with PyTorch
    peak_rss_mb: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> BuildManifest:
        try:
            evaluate = data["evaluate"]
            artifacts = {role: ArtifactRecord(r["file"], r["sha256"], r.get("bytes")) for role, r in data["artifacts"].items()}
            return cls(
                name=str(data["name"]),
                input=InputContract.from_record(data["preprocess"], where),
                artifacts=artifacts,
                top1=dict(evaluate["top1"]),
                split=evaluate.get("split"),
                images=evaluate.get("images"),
                runtime_top1={k: v.get("top1") for k, v in (data.get("runtimes") or {}).items()},
                quantize=data.get("quantize"),
                recipe_sha256=(data.get("recipe") or {}).get("sha256"),
                architecture=(data.get("model") or {}).get("architecture"),
                raw=dict(data),
                stages=tuple(StageRecord(s["stage"], dict(s.get("config") or {})) for s in data.get("stages") or ()),
                sizes=dict(data.get("sizes_bytes") or {}),
                parameters=(data.get("model") or {}).get("parameters"),
                macs=(data.get("model") or {}).get("macs"),
                dataset=(((data.get("recipe") or {}).get("resolved") or {}).get("data") or {}).get("dataset"),
                environment=dict(data.get("environment") or {}),
                seconds=(data.get("timings_s") or {}).get("total"),
                parity_agreement=((data.get("export") or {}).get("parity") or {}).get("top1_agreement"),
                peak_rss_mb=data.get("peak_rss_mb"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{where}: not a vitdeploy build manifest ({type(err).__name__}: {err})") from None

    @property
    def artifact_top1(self) -> float | None:
        """The recipe's artifact's top-1: its INT8 model when quantized, else its FP32 file."""
        return artifact_top1(self.top1)

    @property
    def quantize_mode(self) -> str:
        return (self.quantize or {}).get("mode", "none")

    @property
    def distilled(self) -> bool:
        return bool((self.architecture or {}).get("distilled"))

    def file(self, role: str = "onnx") -> str:
        """The published file name of `role` ("onnx": the recipe's artifact, "fp32_onnx", "torch")."""
        return self.artifacts[role].file

    def role_of(self, file_name: str) -> tuple[str, ArtifactRecord] | None:
        return next(((role, r) for role, r in self.artifacts.items() if r.file == file_name), None)

    def top1_of(self, role: str) -> float | None:
        """The top-1 of the file in `role`: the recipe's artifact is its INT8 model when quantized."""
        return artifact_top1(self.top1) if role == "onnx" else self.top1.get("onnx_fp32")
