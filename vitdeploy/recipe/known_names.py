"""Names a recipe may use that belong to other libraries: timm's ViT models and the op types
ONNX Runtime's quantizer has rules for, read from a list shipped beside this file.

`vitdeploy check` answers from the list without importing timm (and with it torch, seconds) or
ONNX Runtime's quantizer. A name the list lacks is not refused here: the caller asks the
installed library, which may be newer than the list. `python -m vitdeploy.pipeline.known_names`
writes the list from the installed timm and ONNX Runtime; a test keeps the two equal.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

LIST_FILE = Path(__file__).with_name("known_names.json")


@functools.cache
def known_names() -> dict[str, frozenset[str]]:
    data = json.loads(LIST_FILE.read_text())
    return {key: frozenset(data[key]) for key in ("vit_models", "quantizable_op_types")}


def is_known_vit(name: str) -> bool:
    return name in known_names()["vit_models"]


def are_quantizable(op_types: list[str]) -> bool:
    return set(op_types) <= known_names()["quantizable_op_types"]
