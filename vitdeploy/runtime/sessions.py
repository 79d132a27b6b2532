"""The one place a model is opened: ONNX Runtime sessions here, every provider's model through
its backend (`open_predictor`, `vitdeploy.runtime.backends`), for `bench`, `predict`, the
build's scoring and parity checks, bias correction and packaging.

One set of session options, so a prediction runs the way it was timed; one check that the
asked-for provider is installed (with the install line when it is not); and one check for
ONNX Runtime's silent fallback: asked for CUDA or TensorRT, a session whose provider fails to
load runs on the CPU without an error, and a GPU figure or prediction would then be a CPU one.

Imports onnxruntime, and OpenVINO only when a provider of it is asked for: no torch, no onnx package.
"""

from __future__ import annotations

import functools
from pathlib import Path

import onnxruntime as ort

from vitdeploy.core.errors import UserError
from vitdeploy.core.providers import Provider, get_provider
from vitdeploy.runtime.backends.base import Predict, Predictor

ModelSource = Path | str | bytes  # a file, or a serialized model held in memory

INSTALL_HINTS = {
    "CUDAExecutionProvider": "pip install 'vitdeploy[gpu]' (uninstall onnxruntime first: both provide the module)",
    "TensorrtExecutionProvider": "pip install 'vitdeploy[gpu]' and TensorRT's libraries (uninstall onnxruntime first)",
}


class ProviderUnavailable(UserError):
    """The provider cannot run here: not installed, failed to load, or the CPU lacks what it needs."""


def session_options(threads: int | None, profile_prefix: str | None = None) -> ort.SessionOptions:
    """All graph optimizations, sequential execution, `threads` intra-op threads (None: ORT's default)."""
    opts = ort.SessionOptions()
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def require_execution_provider(provider: Provider) -> str:
    """ONNX Runtime's name for `provider`, or ProviderUnavailable with the package that brings it."""
    ep = provider.execution_provider
    if ep is None:
        raise ProviderUnavailable(f"{provider.name} is not an ONNX Runtime provider")
    if ep not in ort.get_available_providers():
        hint = f"; {INSTALL_HINTS[ep]}" if ep in INSTALL_HINTS else ""
        raise ProviderUnavailable(f"{ep} is not available in this onnxruntime ({ort.__version__}){hint}")
    return ep


@functools.cache
def preload_gpu_libraries() -> None:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels, as `import torch` would, without torch."""
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
        ort.preload_dlls()


def open_session(
    model: ModelSource,
    provider: str = "cpu",
    threads: int | None = None,
    *,
    options: dict[str, str] | None = None,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session on `provider`, refused (ProviderUnavailable) when ORT would fall
    back to another provider; a UserError when ORT cannot load the model."""
    prov = get_provider(provider)
    ep = require_execution_provider(prov)
    if prov.on_gpu:
        preload_gpu_libraries()
    entry: str | tuple[str, dict[str, str]] = (ep, options) if options else ep
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, session_options(threads, profile_prefix), providers=[entry])
    except Exception as err:  # ORT raises its own exception types for invalid graphs
        name = "the model" if isinstance(model, bytes) else Path(model).name
        raise UserError(f"{name}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
    used = session.get_providers()[0]
    if used != ep:
        raise ProviderUnavailable(f"{ep} failed to initialise (ONNX Runtime fell back to {used})")
    return session


def session_predictor(session: ort.InferenceSession) -> Predict:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def open_predictor(path: Path, provider: str = "cpu", threads: int | None = None) -> Predictor:
    """Logits of an ONNX file on any registered provider, any batch size."""
    from vitdeploy.runtime.backends import backend_for

    prov = get_provider(provider)
    return backend_for(prov).open_predictor(path, prov, threads)
