"""One module per runtime, each a `Backend` (base.py); a provider names its module.

Modules load on first use, so listing providers or opening a model on ONNX Runtime never
imports OpenVINO."""

from __future__ import annotations

import functools
import importlib

from vitdeploy.core.providers import Provider, get_provider
from vitdeploy.runtime.backends.base import Backend


@functools.cache
def _load(module: str) -> Backend:
    return importlib.import_module(f"vitdeploy.runtime.backends.{module}").BACKEND


def backend_for(provider: Provider | str) -> Backend:
    """The backend that opens, checks and times models on `provider` (a Provider or its name)."""
    prov = get_provider(provider) if isinstance(provider, str) else provider
    return _load(prov.backend)
