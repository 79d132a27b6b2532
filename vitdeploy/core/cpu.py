"""What this CPU can do, read from /proc/cpuinfo (Linux; empty answers elsewhere).

The instruction sets named here decide INT8 and bfloat16 speed, and whether ONNX Runtime's
uint8 x int8 kernels can saturate (no VNNI). Standard library only.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block ends
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or ""


def cpu_isa() -> dict[str, bool]:
    """The flags in `ISA_FLAGS`, each present or not; {} where /proc/cpuinfo cannot be read."""
    if not _cpuinfo():
        return {}
    flags = set(_cpuinfo().get("flags", "").split())
    return {name: name in flags for name in ISA_FLAGS}


def has_vnni() -> bool:
    """VNNI (AVX512-VNNI or AVX-VNNI) makes uint8 x int8 dot products exact; without it they can saturate."""
    isa = cpu_isa()
    return bool(isa.get("avx512_vnni") or isa.get("avx_vnni"))
