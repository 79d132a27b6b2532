"""The recipe reference in Markdown, generated from the pydantic schema so it cannot drift.

    python -m vitdeploy.recipe.reference > docs/recipe-reference.md

A test checks that the committed file equals this output.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vitdeploy.recipe.schema import STAGE_CONFIGS, Recipe

HEADER = """# Recipe reference

Generated from `vitdeploy/recipe/schema.py` by `python -m vitdeploy.recipe.reference`; do not edit by hand.
Every section rejects unknown keys. Relative paths are relative to the recipe file.
`vitdeploy check RECIPE` validates a recipe without running anything.
"""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `X | None`), if there is exactly one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or none" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__} of {inner}" if inner else origin.__name__
    if origin is typing.Annotated:
        return "list of stages"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True) if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value is not None else "none"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        if sub is not None and name != "stages":
            yield from rows(sub, f"{path}.")
            continue
        if name == "stages" or (name == "stage" and prefix.startswith("stages")):
            continue
        doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        yield f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {doc} |"


def markdown() -> str:
    table = "| field | type | default | meaning |\n| --- | --- | --- | --- |"
    parts = [HEADER, "## Recipe", "", table, *rows(Recipe), ""]
    parts += ["## Stages", "", "`stages:` is a list; each entry names its kind with `stage:`.", ""]
    for config in STAGE_CONFIGS:
        name = config.model_fields["stage"].default
        parts += [f"### `stage: {name}`", "", (config.__doc__ or "").strip(), "", table, *rows(config, "stages[].")]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
