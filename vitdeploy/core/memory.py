"""Handing freed memory back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import gc


def release_freed_memory() -> None:
    """Collect garbage, then return what glibc's allocator keeps of freed memory to the OS.

    Why: glibc keeps freed heap pages for reuse, so a step that briefly held a large model (a
    parsed ONNX graph, an inference session) leaves the process that much larger for every
    step after it, and the peaks of later steps add up on top. Elsewhere (not glibc) a no-op.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
