"""Libraries' chatter kept down for the length of a call, and put back after it.

ONNX Runtime's quantizer warns on the root logger and its transformer tools on their own; a
process that builds, then serves or tests, must get its loggers back as they were."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logger_level(level: int, name: str | None = None) -> Iterator[None]:
    """The logger `name` (None: the root logger) at `level` inside the block, its own level after."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
