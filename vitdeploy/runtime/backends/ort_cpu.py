"""ONNX Runtime on the CPU: the reference every artifact is scored and compared on.

Sessions are opened by `vitdeploy.runtime.sessions.open_session`: one set of session options
for timing and prediction alike, and the check that the provider asked for is the one that runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitdeploy.core.providers import Provider
from vitdeploy.runtime.backends.base import Backend, Predictor, TimedModel, TimingSettings
from vitdeploy.runtime.sessions import open_session, require_execution_provider


class OnnxRuntimeCpu(Backend):
    def require(self, provider: Provider) -> None:
        require_execution_provider(provider)

    def version(self) -> str | None:
        return ort.__version__

    def machine_facts(self) -> dict:
        return {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}

    def open_predictor(self, model: Path, provider: Provider, threads: int | None) -> Predictor:
        session = open_session(model, provider.name, threads)
        inp = session.get_inputs()[0]
        name = inp.name
        return Predictor(lambda x: session.run(None, {name: x})[0], tuple(inp.shape))

    def session(self, model: Path, provider: Provider, threads: int | None, settings: TimingSettings) -> ort.InferenceSession:
        options = self.provider_options(provider, settings)
        return open_session(model, provider.name, threads, options=options, profile_prefix=settings.profile_prefix)

    def open_timed(
        self, model: Path, provider: Provider, batch: int, threads: int | None, settings: TimingSettings
    ) -> TimedModel:
        session = self.session(model, provider, threads, settings)
        feeds = {session.get_inputs()[0].name: random_input(session, batch, settings.seed)}
        return TimedModel(lambda: session.run(None, feeds), session)


def random_input(session: ort.InferenceSession, batch: int, seed: int) -> np.ndarray:
    """A standard-normal float32 batch of the session's input shape; ValueError for inputs bench cannot feed."""
    inp = session.get_inputs()[0]
    dims = list(inp.shape)
    if isinstance(dims[0], int) and dims[0] != batch:
        raise ValueError(f"model input '{inp.name}' has a fixed batch {dims[0]}, cannot run batch {batch}")
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ValueError(f"model input '{inp.name}' has dynamic dims {dims[1:]}; give a fixed-size model")
    if inp.type != "tensor(float)":
        raise ValueError(f"model input '{inp.name}' is {inp.type}; bench feeds float32 images")
    return np.random.default_rng(seed).standard_normal([batch, *dims[1:]], dtype=np.float32)


BACKEND = OnnxRuntimeCpu()
