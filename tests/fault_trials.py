"""Fault trials run by tests/test_faults.py inside a private mount namespace (`unshare -rm`).

Each trial mounts a fresh tmpfs (or a read-only bind) at the output folder, puts the previously
published artifact there, runs a real build or `package`, and reports as one JSON line: how it
ended, whether the published files are byte-identical to before, and what temporary files were
left. Not a test module: it needs the namespace to mount.

    unshare -rm python tests/fault_trials.py RECIPE REFERENCE_OUT OUT MODE [SIZES_KB...]

Sizes grow; the trials stop at the first that succeeds. No size: one read-only trial.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from vitdeploy.core.errors import UserError
from vitdeploy.core.storage import StorageError
from vitdeploy.delivery.packaging import package
from vitdeploy.pipeline.build import build
from vitdeploy.recipe.schema import load_recipe


def published(out: Path) -> dict[str, str]:
    """Every visible file of the output folder (artifacts, manifests, bundles) and its hash."""
    files = [p for p in out.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(out: Path) -> list[str]:
    """Temporary files and scratch folders anywhere under the output folder."""
    names = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".quantize-", ".tmp"))]
    names += [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".work"]  # package staging, old bundles
    return sorted(str(p.relative_to(out)) for p in names)


def mount(out: Path, size_kb: int | None, reference: Path) -> None:
    """A tmpfs of `size_kb` at `out` holding the published files of `reference` (None: read-only)."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb or 65536}k", "tmpfs", str(out)], check=True)
    for p in reference.iterdir():
        if p.is_file():
            shutil.copyfile(p, out / p.name)
        elif p.name.endswith(".bundle"):
            shutil.copytree(p, out / p.name)
    if size_kb is None:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], check=True)


def trial(mode: str, recipe: Path, out: Path, reference: Path, size_kb: int | None) -> dict:
    mount(out, size_kb, reference)
    before = published(out)
    result: dict = {"mode": mode, "size_kb": size_kb}
    try:
        if mode == "build":
            build(load_recipe(recipe), recipe, torch.device("cpu"), fresh=True)
        else:
            artifact = out / f"{load_recipe(recipe).artifact_name}.onnx"
            package(artifact, out / f"{artifact.stem}.bundle")
        result["ended"] = "ok"
    except StorageError as err:
        result |= {"ended": "storage", "message": str(err)}
    except UserError as err:
        result |= {"ended": "user", "message": str(err)}
    except Exception as err:  # what the CLI would call an internal error: the trials count it
        import traceback

        result |= {"ended": "internal", "message": f"{type(err).__name__}: {err}", "where": traceback.format_exc()[-1500:]}
    result["published_unchanged"] = published(out) == before
    result["leftovers"] = leftovers(out)
    subprocess.run(["umount", str(out)], check=True)
    return result


def main() -> None:
    recipe, reference, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    sizes = [int(s) for s in sys.argv[5:]] or [None]
    out.mkdir(parents=True, exist_ok=True)
    for size in sizes:  # growing sizes: the first one the job fits in ends the trials
        result = trial(mode, recipe, out, reference, size)
        print(json.dumps(result), flush=True)
        if result["ended"] == "ok":
            break


if __name__ == "__main__":
    main()
