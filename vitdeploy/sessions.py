"""ONNX Runtime sessions as vitdeploy runs them: one set of session options, shared by `bench`
and `predict` so a prediction runs the way it was timed. Imports only onnxruntime."""

from __future__ import annotations

import onnxruntime as ort


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
