"""The one record of where a figure was measured, shared by `bench`, the build manifest and
bundles: the CPU (name, cores, instruction sets), Python, ONNX Runtime and its providers, and
OpenVINO when it took part. Each caller adds what only it knows (bench: its session options;
the build: torch, timm and onnx)."""

from __future__ import annotations

import os
import platform

import onnxruntime as ort
import psutil

from vitdeploy.core.cpu import cpu_isa, cpu_name, has_vnni


def machine_record(openvino: bool = False) -> dict:
    from vitdeploy.runtime.openvino import version as openvino_version

    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_isa": cpu_isa(),
        "cpu_vnni": has_vnni(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "openvino": openvino_version() if openvino else None,
    }
