"""OpenVINO's CPU runtime for vitdeploy's ONNX artifacts (the optional `vitdeploy[openvino]` extra).

OpenVINO reads an ONNX file directly: a static QDQ artifact's QuantizeLinear/DequantizeLinear
pairs become its own INT8 kernels (VNNI, AMX where present). ONNX Runtime contrib operators
(QAttention, DynamicQuantizeMatMul, ...) it cannot read; such a model fails to load with
OpenVINO's message, and bench reports that cell as skipped.

No torch here: bench and predict use this module on machines that only run models. Models are
opened through `OpenVinoCpu` (bottom), which checks availability and precision first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitdeploy.core.errors import UserError
from vitdeploy.core.providers import Provider
from vitdeploy.runtime.backends.base import Backend, Predictor, TimedModel, TimingSettings
from vitdeploy.runtime.sessions import ProviderUnavailable


def missing_reason() -> str | None:
    """Why the OpenVINO runtime cannot be used here, or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed (pip install 'vitdeploy[openvino]')"
    return None


@functools.cache
def version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def _config(threads: int | None, latency: bool, precision: str) -> dict[str, object]:
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict[str, object] = {
        # One request at a time, as ONNX Runtime's sequential session runs: latency mode.
        hints.performance_mode: hints.PerformanceMode.LATENCY if latency else hints.PerformanceMode.THROUGHPUT,
        # Asked for, never OpenVINO's choice: left alone it picks bf16 on CPUs that have it.
        hints.inference_precision: precision,
    }
    if threads:
        config[props.inference_num_threads] = threads
    return config


def check_precision(precision: str, core=None) -> None:
    """bf16 only where the CPU computes it natively (RuntimeError elsewhere)."""
    if precision != "bf16":
        return
    import openvino as ov

    core = core or ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("this CPU has no bfloat16 support (AVX-512 BF16 or AMX)")


def compile_model(path: Path, batch: int | None, threads: int | None, precision: str = "f32"):
    """A compiled OpenVINO model of `path` on the CPU, its batch fixed to `batch` (None: dynamic).

    `precision` is the inference precision of the layers the artifact leaves in float: f32, or
    bf16 on CPUs with native bfloat16 (RuntimeError elsewhere).
    """
    import openvino as ov

    core = ov.Core()
    check_precision(precision, core)
    model = core.read_model(str(path))
    if batch is not None:
        shape = list(model.inputs[0].get_partial_shape())
        shape[0] = batch
        model.reshape({model.inputs[0]: ov.PartialShape(shape)})
    return core.compile_model(model, "CPU", _config(threads, latency=True, precision=precision))


def bound_request(compiled, x: np.ndarray) -> Callable[[], object]:
    """One synchronous inference on `x`, the input already bound (copies are not timed)."""
    import openvino as ov

    request = compiled.create_infer_request()
    request.set_input_tensor(0, ov.Tensor(x))

    def run() -> None:
        request.infer()

    return run


def batch_predictor(compiled) -> Callable[[np.ndarray], np.ndarray]:
    """x (N, 3, H, W) float32 -> logits, any batch size, on a model compiled with a dynamic batch."""
    request = compiled.create_infer_request()

    def predict(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x})[compiled.outputs[0]]

    return predict


def require(provider: Provider) -> None:
    """ProviderUnavailable when OpenVINO is missing or the CPU cannot compute at the provider's precision.
    Its messages never name the provider: each caller says how the user chose it."""
    reason = missing_reason()
    if reason is None:
        try:
            check_precision(provider.precision)
        except RuntimeError as err:
            reason = str(err)
    if reason:
        raise ProviderUnavailable(reason)


def compile_checked(path: Path, provider: Provider, threads: int | None = None, batch: int | None = None):
    """An OpenVINO compiled model of `path` (batch fixed, or dynamic when None); a UserError
    carrying OpenVINO's own last line when it cannot read the model."""
    require(provider)
    try:
        return compile_model(path, batch, threads, provider.precision)
    except Exception as err:  # OpenVINO's own message: an operator it cannot read, say
        raise UserError(f"OpenVINO cannot run this model: {str(err).strip().splitlines()[-1][:200]}") from None


def static_dims(partial_shape) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


class OpenVinoCpu(Backend):
    def require(self, provider: Provider) -> None:
        require(provider)

    def version(self) -> str | None:
        return version()

    def machine_facts(self) -> dict:
        return {"openvino": version()}

    def open_predictor(self, model: Path, provider: Provider, threads: int | None) -> Predictor:
        compiled = compile_checked(model, provider, threads)
        return Predictor(batch_predictor(compiled), static_dims(compiled.inputs[0].get_partial_shape()))

    def open_timed(
        self, model: Path, provider: Provider, batch: int, threads: int | None, settings: TimingSettings
    ) -> TimedModel:
        compiled = compile_checked(model, provider, threads, batch)
        shape = [batch, *list(compiled.inputs[0].get_shape())[1:]]
        x = np.random.default_rng(settings.seed).standard_normal(shape, dtype=np.float32)
        return TimedModel(bound_request(compiled, x), compiled)


BACKEND = OpenVinoCpu()
