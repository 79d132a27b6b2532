"""Fault figures for docs/edge.md: full and read-only disks during a build and `package`, faults at
every rename, and what the build lock costs.

    python benchmarks/faults.py RECIPE [--steps 40]

Builds RECIPE once into a scratch folder (the "published before" state), then, in a private
mount namespace (`unshare -rm`), runs it again on tmpfs folders growing by half the FP32 file
until it fits, packages it likewise, tries both on a read-only folder, and fails each rename of
one build in turn. Prints one line per kind: faults, clean endings (exit-2 class, one line,
published files byte-identical, no temporary left), bytes of published files lost.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vitdeploy.core.locking import exclusive
from vitdeploy.core.storage import StorageError
from vitdeploy.pipeline.build import build
from vitdeploy.recipe.schema import load_recipe

TRIALS = Path(__file__).resolve().parents[1] / "tests" / "fault_trials.py"


def published(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def tmpfs_trials(recipe: Path, reference: Path, mode: str, sizes: list[int] | None) -> list[dict]:
    mnt = recipe.parent / "mnt"
    args = ["unshare", "-rm", sys.executable, str(TRIALS), str(recipe), str(reference), str(mnt), mode]
    done = subprocess.run(args + [str(s) for s in sizes or []], capture_output=True, text=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def what_failed(message: str) -> str:
    found = re.search(r"\(writing ([^,)]+)|while (quantizing [^\s:]+)|for (quantizing [^\s:]+)|(read-only)", message)
    return next(g for g in found.groups() if g) if found else message


def summary(kind: str, trials: list[dict]) -> None:
    faults = [t for t in trials if t["ended"] != "ok"]
    clean = [t for t in faults if t["ended"] == "storage" and t["published_unchanged"] and not t["leftovers"]]
    where = sorted({what_failed(t["message"]) for t in faults})
    print(f"{kind}: {len(faults)} faults, {len(clean)} ended cleanly, published bytes lost 0" if len(clean) == len(faults)
          else f"{kind}: {len(faults)} faults, {len(clean)} ended cleanly: {faults}")  # fmt: skip
    print(f"  failed while writing: {', '.join(where)}")


def rename_trials(recipe_path: Path, reference: Path) -> None:
    out = load_recipe(recipe_path).output.dir
    real = os.replace
    calls = {"n": 0, "fail": None}

    def replace(src, dst) -> None:
        calls["n"] += 1
        if calls["n"] == calls["fail"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    os.replace = replace
    try:
        build(load_recipe(recipe_path), recipe_path, torch.device("cpu"), fresh=True)
        total, clean, survived = calls["n"], 0, 0
        for k in range(1, total + 1):
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(reference, out, ignore=shutil.ignore_patterns(".work"), copy_function=shutil.copyfile)
            before = published(out)
            calls.update(n=0, fail=k)
            try:
                build(load_recipe(recipe_path), recipe_path, torch.device("cpu"), fresh=True)
                survived += 1  # the shared export copy failed: the build went on without it
            except StorageError:
                clean += published(out) == before and not list(out.rglob("*.tmp"))
    finally:
        os.replace = real
    print(f"renames: {total - survived} faults, {clean} ended cleanly ({survived} more only cost the shared FP32 copy)")


def lock_cost(folder: Path, rounds: int = 1000) -> None:
    start = time.perf_counter()
    for _ in range(rounds):
        with exclusive(folder / "lock", "a build of x", wait=False):
            pass
    print(f"build lock: {1e3 * (time.perf_counter() - start) / rounds:.3f} ms to take and release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vitdeploy-faults-"))
    data = yaml.safe_load(args.recipe.read_text())
    data["output"] = {"dir": str(scratch / "reference")}
    ref_recipe = scratch / "reference.yaml"
    ref_recipe.write_text(yaml.safe_dump(data))
    build(load_recipe(ref_recipe), ref_recipe, torch.device("cpu"))
    reference = scratch / "reference"
    data["output"] = {"dir": str(scratch / "mnt")}
    recipe = scratch / "trial.yaml"
    recipe.write_text(yaml.safe_dump(data))
    name = load_recipe(recipe).artifact_name
    before = sum(p.stat().st_size for p in reference.iterdir() if p.is_file())
    fp32 = (reference / f"{name}.fp32.onnx").stat().st_size
    int8 = (reference / f"{name}.onnx").stat().st_size
    steps = range(1, args.steps)
    summary("full disk, build", tmpfs_trials(recipe, reference, "build", [(before + k * fp32 // 2) // 1024 for k in steps]))
    summary("full disk, package", tmpfs_trials(recipe, reference, "package", [(before + k * int8 // 4) // 1024 for k in steps]))
    summary("read-only output", tmpfs_trials(recipe, reference, "build", None) + tmpfs_trials(recipe, reference, "package", None))
    data["output"] = {"dir": str(scratch / "renames")}
    recipe.write_text(yaml.safe_dump(data))
    rename_trials(recipe, reference)
    lock_cost(scratch)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
