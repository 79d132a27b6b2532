"""What vitdeploy asks of a runtime, in one small interface.

`bench`, `predict`, the build's checks and `tune` ask a provider's backend (through
`backend_for`) whether it is installed, its version, what a machine record says of it, and for
a model opened on it: a predictor (a preprocessed batch in, logits out) or one timed inference.
A runtime's own differences (ONNX Runtime's sessions and I/O binding, OpenVINO's compiled models)
stay inside its module, so adding a runtime is one module here and its providers' entry in
`vitdeploy.core.providers`.

No torch, no onnx package: a device imports this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitdeploy.core.providers import Provider

Predict = Callable[[np.ndarray], np.ndarray]  # preprocessed float32 NCHW batch -> logits


@dataclass(frozen=True)
class Predictor:
    """A model opened for prediction: call it with a batch; `input_shape` as the runtime reads
    the file (an int per fixed dimension, a name or None per dynamic one)."""

    run: Predict
    input_shape: tuple

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


@dataclass(frozen=True)
class TimingSettings:
    """How `bench` asks for one timed inference; a backend reads what applies to it."""

    seed: int = 0  # of the random input
    include_copies: bool = False  # GPU: time host<->device copies too
    cuda_graph: bool = False  # CUDA: capture the run once as a CUDA graph and replay it
    profile_prefix: str | None = None  # ONNX Runtime: write a per-operator profile under this prefix


@dataclass
class TimedModel:
    """One inference on a fixed random input (`run`), and what keeps the model alive (`handle`)."""

    run: Callable[[], object]
    handle: object


class Backend(ABC):
    """A runtime as vitdeploy uses it."""

    @abstractmethod
    def require(self, provider: Provider) -> None:
        """Raise ProviderUnavailable when `provider` cannot run here (not installed, the CPU lacks
        what it needs), with the line that says what to install."""

    def missing_reason(self, provider: Provider) -> str | None:
        """Why `provider` cannot run here, or None."""
        from vitdeploy.runtime.sessions import ProviderUnavailable

        try:
            self.require(provider)
        except ProviderUnavailable as err:
            return str(err)
        return None

    @abstractmethod
    def version(self) -> str | None:
        """The runtime's version, None when it is not installed."""

    def machine_facts(self) -> dict:
        """What a machine record says of this runtime beside the CPU and Python."""
        return {}

    def provider_options(self, provider: Provider, settings: TimingSettings) -> dict[str, str]:
        """The runtime options `settings` asks of `provider` (recorded beside bench figures)."""
        return {}

    @abstractmethod
    def open_predictor(self, model: Path, provider: Provider, threads: int | None) -> Predictor:
        """Logits of the ONNX file `model`, any batch size; a UserError when it cannot be opened."""

    @abstractmethod
    def open_timed(
        self, model: Path, provider: Provider, batch: int, threads: int | None, settings: TimingSettings
    ) -> TimedModel:
        """`model` ready to time at `batch`: the input bound, copies outside the timed call."""
