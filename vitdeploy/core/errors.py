"""Errors the user can fix. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a recipe, a path, a model name. Carries a message a person can act on."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe that does not validate; `problems` are `field: message` lines."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"invalid recipe {path}: {problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"invalid recipe {path}:\n{lines}")


class BuildError(Exception):
    """A build that ran but failed a gate (parity, accuracy). Exit code 1."""

    exit_code = 1
