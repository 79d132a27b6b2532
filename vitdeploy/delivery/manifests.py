"""Is a build manifest current: the one rule `report` and `tune` both ask."""

from __future__ import annotations

import json
from collections.abc import Callable

from vitdeploy.core.contract import BuildManifest
from vitdeploy.core.errors import UserError
from vitdeploy.recipe.schema import Recipe


def current_manifest(recipe: Recipe, made_alike: Callable[[BuildManifest], bool] | None = None) -> BuildManifest | None:
    """The manifest of the last build of exactly this recipe, when every file it lists is there
    at its recorded size; None otherwise. `made_alike`: also what made it must match (tune asks
    for the same vitdeploy code and libraries, since it reuses the files as its own)."""
    path = recipe.output.dir / f"{recipe.artifact_name}.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        typed = BuildManifest.from_dict(manifest, str(path))
    except UserError:  # not a build manifest (another tool's file of that name): built again
        return None
    if typed.recipe_sha256 != recipe.digest():
        return None
    for record in typed.artifacts.values():
        file = recipe.output.dir / record.file
        if not file.is_file() or (record.bytes is not None and file.stat().st_size != record.bytes):
            return None
    if made_alike is not None and not made_alike(typed):
        return None
    return typed
