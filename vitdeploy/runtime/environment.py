"""The one record of where a figure was measured, shared by `bench`, the build manifest and
bundles: the CPU (name, cores, instruction sets), Python, ONNX Runtime and its providers, and
each other runtime that took part (its backend says what to record). Each caller adds what only
it knows (bench: its session options; the build: torch, timm and onnx)."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable

import psutil

from vitdeploy.core.cpu import cpu_isa, cpu_name, has_vnni
from vitdeploy.core.providers import REFERENCE, Provider, get_provider
from vitdeploy.runtime.backends import backend_for


def machine_record(providers: Iterable[Provider] = ()) -> dict:
    """The machine and the runtimes behind `providers` (ONNX Runtime's always; "openvino": None
    when OpenVINO took no part)."""
    record = {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_isa": cpu_isa(),
        "cpu_vnni": has_vnni(),
        "python": platform.python_version(),
    }
    for backend in dict.fromkeys(backend_for(p) for p in (get_provider(REFERENCE), *providers)):
        record |= backend.machine_facts()
    return record | {"openvino": record.get("openvino")}  # readers of older records expect the key
