"""OpenVINO's CPU runtime for vitdeploy's ONNX artifacts (the optional `vitdeploy[openvino]` extra).

OpenVINO reads an ONNX file directly: a static QDQ artifact's QuantizeLinear/DequantizeLinear
pairs become its own INT8 kernels (VNNI, AMX where present). ONNX Runtime contrib operators
(QAttention, DynamicQuantizeMatMul, ...) it cannot read; such a model fails to load with
OpenVINO's message, and bench reports that cell as skipped.

No torch here: bench and predict use this module on machines that only run models. Models are
opened through `vitdeploy.runtime.sessions`, which checks availability and precision first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np


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
