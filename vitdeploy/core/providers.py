"""Where a model runs: every provider name that `bench`, `predict` and `package` accept.

A provider is a runtime plus how it is asked to compute. ONNX Runtime's execution providers
(cpu, cuda, tensorrt) compute the same function, so a model is scored once for all of them.
OpenVINO's CPU runtime runs its own kernels and fusions; `openvino` keeps the layers an
artifact leaves in float at float32, `openvino-bf16` lets OpenVINO compute them in bfloat16,
which CPUs with AVX-512 BF16 or AMX do natively (elsewhere OpenVINO keeps float32). Each
OpenVINO provider is scored on its own.

Imports nothing but the standard library: the registry is read before any runtime loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitdeploy.core.errors import UserError


@dataclass(frozen=True)
class Provider:
    name: str  # what users type
    runtime: str  # "onnxruntime" or "openvino"
    summary: str
    execution_provider: str | None = None  # ONNX Runtime's name for it
    precision: str = "f32"  # OpenVINO: inference precision of the layers left in float

    @property
    def on_gpu(self) -> bool:
        return self.execution_provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    @property
    def scored_on(self) -> Provider:
        """The provider whose top-1 stands for this one's: ONNX Runtime's all compute the same
        function and are scored on the CPU; each OpenVINO provider is scored on itself."""
        return PROVIDERS["cpu"] if self.runtime == "onnxruntime" else self


PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    if provider.name in PROVIDERS:
        raise ValueError(f"provider {provider.name} is registered twice")
    PROVIDERS[provider.name] = provider
    return provider


register(Provider("cpu", "onnxruntime", "ONNX Runtime, CPU", "CPUExecutionProvider"))
register(Provider("cuda", "onnxruntime", "ONNX Runtime, CUDA", "CUDAExecutionProvider"))
register(Provider("tensorrt", "onnxruntime", "ONNX Runtime, TensorRT", "TensorrtExecutionProvider"))
register(Provider("openvino", "openvino", "OpenVINO CPU, float32 where not INT8"))
register(Provider("openvino-bf16", "openvino", "OpenVINO CPU, bfloat16 where not INT8", precision="bf16"))


def get_provider(name: str) -> Provider:
    """The registered provider `name`; a UserError naming the choices otherwise."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UserError(f"unknown provider '{name}'; choose from {', '.join(PROVIDERS)}") from None


def provider_list(names: str) -> tuple[str, ...]:
    """A comma list of provider names, each checked."""
    chosen = tuple(n.strip() for n in names.split(",") if n.strip())
    if not chosen:
        raise UserError("no provider given")
    for n in chosen:
        get_provider(n)
    return chosen


def choices_help() -> str:
    """'cpu, cuda, tensorrt (ONNX Runtime); openvino, openvino-bf16 (OpenVINO CPU)', from the registry."""
    by_runtime: dict[str, list[str]] = {}
    for p in PROVIDERS.values():
        by_runtime.setdefault(p.runtime, []).append(p.name)
    labels = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO CPU"}
    return "; ".join(f"{', '.join(names)} ({labels.get(rt, rt)})" for rt, names in by_runtime.items())
