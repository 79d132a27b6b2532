"""Recipes: the pydantic schema that is the single source of truth, its safe YAML loader and the
generated reference. No torch, no runtime: `vitdeploy check` reads only this and `core`."""
