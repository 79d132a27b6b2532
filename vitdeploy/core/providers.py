"""Where a model runs: every provider name that `bench`, `predict` and `package` accept.

A provider is a runtime plus how it is asked to compute. ONNX Runtime's execution providers
(cpu, cuda, tensorrt) compute the same function, so a model is scored once for all of them.
OpenVINO's CPU runtime runs its own kernels and fusions; `openvino` keeps the layers an
artifact leaves in float at float32, `openvino-bf16` lets OpenVINO compute them in bfloat16,
which CPUs with AVX-512 BF16 or AMX do natively (elsewhere OpenVINO keeps float32). Each
OpenVINO provider is scored on its own.

What a provider *is* lives here, as data; what it takes to open, check and time a model on it
lives in its backend module (`vitdeploy.runtime.backends.<backend>`). Callers ask these two
and never compare a runtime's name.

Imports nothing but the standard library: the registry is read before any runtime loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.core.errors import UserError


@dataclass(frozen=True)
class Provider:
    name: str  # what users type
    runtime: str  # the runtime family, as manifests and machine records name it
    summary: str
    backend: str  # the module of vitdeploy.runtime.backends that opens and times models on it
    execution_provider: str | None = None  # ONNX Runtime's name for it
    precision: str = "f32"  # OpenVINO: inference precision of the layers left in float
    target: str | None = None  # its name in a recipe's `runtimes`, where a build can target it
    device: str = "cpu"  # where it computes, in PyTorch's words ("cpu", "cuda")
    standard_ops_only: bool = False  # reads standard ONNX operators only, none of ONNX Runtime's fused ones
    scored_alone: bool = False  # computes with its own kernels and fusions: scored on itself
    pytorch_twin: bool = False  # PyTorch on `device` is its like-for-like reference in `bench --torch`
    quantizers: tuple[str, ...] = ("onnxruntime",)  # the quantize.backend values that make files for it

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def is_reference(self) -> bool:
        """The provider every artifact is scored and compared on: ONNX Runtime on the CPU."""
        return self.name == REFERENCE

    @property
    def scored_on(self) -> Provider:
        """The provider whose top-1 stands for this one's: ONNX Runtime's all compute the same
        function and are scored on the CPU; each OpenVINO provider is scored on itself."""
        return self if self.scored_alone else PROVIDERS[REFERENCE]


PROVIDERS: dict[str, Provider] = {}
REFERENCE = "cpu"


def register(provider: Provider) -> Provider:
    if provider.name in PROVIDERS:
        raise ValueError(f"provider {provider.name} is registered twice")
    PROVIDERS[provider.name] = provider
    return provider


ORT = {"runtime": "onnxruntime"}
GPU = {"device": "cuda", "backend": "ort_gpu"}
OPENVINO = {"runtime": "openvino", "backend": "openvino", "standard_ops_only": True, "scored_alone": True,
            "quantizers": ("onnxruntime", "nncf")}  # fmt: skip
register(Provider("cpu", summary="ONNX Runtime, CPU", backend="ort_cpu", execution_provider="CPUExecutionProvider",
                  target="onnxruntime", pytorch_twin=True, **ORT))  # fmt: skip
register(Provider("cuda", summary="ONNX Runtime, CUDA", execution_provider="CUDAExecutionProvider", pytorch_twin=True,
                  **ORT, **GPU))  # fmt: skip
register(Provider("tensorrt", summary="ONNX Runtime, TensorRT", execution_provider="TensorrtExecutionProvider", **ORT, **GPU))
register(Provider("openvino", summary="OpenVINO CPU, float32 where not INT8", target="openvino", **OPENVINO))
register(Provider("openvino-bf16", summary="OpenVINO CPU, bfloat16 where not INT8", precision="bf16", target="openvino-bf16",
                  **OPENVINO))  # fmt: skip


def get_provider(name: str) -> Provider:
    """The registered provider `name`; a UserError naming the choices otherwise."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UserError(f"unknown provider '{name}'; choose from {', '.join(PROVIDERS)}") from None


def target_provider(target: str) -> Provider:
    """The provider a recipe's `runtimes` entry builds for ("onnxruntime" is ONNX Runtime's CPU)."""
    for provider in PROVIDERS.values():
        if provider.target == target:
            return provider
    raise UserError(f"unknown runtime '{target}'; choose from {', '.join(p.target for p in PROVIDERS.values() if p.target)}")


def recipe_targets(providers: tuple[str, ...]) -> list[str]:
    """A recipe's `runtimes` for artifacts measured on `providers`: the reference always, and
    every provider that needs a graph of its own (standard operators, scored on itself)."""
    chosen = [get_provider(p) for p in providers]
    return [PROVIDERS[REFERENCE].target, *(p.target for p in chosen if p.standard_ops_only and p.target)]


def provider_list(names: str) -> tuple[str, ...]:
    """A comma list of provider names, each checked."""
    chosen = tuple(n.strip() for n in names.split(",") if n.strip())
    if not chosen:
        raise UserError("no provider given")
    for n in chosen:
        get_provider(n)
    return chosen


RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO CPU"}


def choices_help() -> str:
    """'cpu, cuda, tensorrt (ONNX Runtime); openvino, openvino-bf16 (OpenVINO CPU)', from the registry."""
    by_runtime: dict[str, list[str]] = {}
    for p in PROVIDERS.values():
        by_runtime.setdefault(p.runtime, []).append(p.name)
    return "; ".join(f"{', '.join(names)} ({RUNTIME_LABELS.get(rt, rt)})" for rt, names in by_runtime.items())
