"""ONNX Runtime's CUDA and TensorRT execution providers.

Timed with I/O binding: input and output stay on the device, so host copies are not timed
(unless asked for). Asked for CUDA or TensorRT, ONNX Runtime runs nodes it cannot place on the
CPU without an error; `bench` profiles each GPU cell to say which ran where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitdeploy.core.providers import Provider
from vitdeploy.runtime.backends.base import TimedModel, TimingSettings
from vitdeploy.runtime.backends.ort_cpu import OnnxRuntimeCpu, random_input


class OnnxRuntimeGpu(OnnxRuntimeCpu):
    def provider_options(self, provider: Provider, settings: TimingSettings) -> dict[str, str]:
        # TensorRT builds its own engine; a CUDA graph is the CUDA provider's option.
        cuda_graph = settings.cuda_graph and provider.execution_provider == "CUDAExecutionProvider"
        return {"enable_cuda_graph": "1"} if cuda_graph else {}

    def open_timed(
        self, model: Path, provider: Provider, batch: int, threads: int | None, settings: TimingSettings
    ) -> TimedModel:
        if settings.include_copies:
            return super().open_timed(model, provider, batch, threads, settings)
        session = self.session(model, provider, threads, settings)
        x = random_input(session, batch, settings.seed)
        # A CUDA graph replays fixed addresses, so the outputs are allocated here once, not per run.
        binding = session.io_binding()
        binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for out in session.get_outputs():
            shape = [x.shape[0] if not isinstance(d, int) else d for d in out.shape]
            binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0))
        return TimedModel(lambda: session.run_with_iobinding(binding), session)


BACKEND = OnnxRuntimeGpu()
