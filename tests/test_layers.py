"""The architecture as a contract: layers import only downwards, and the device side, `data`,
`onnx` and `bench` never import torch. Checked with import-linter, which reads every import
statement, those inside functions too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run([*LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_every_import_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout


def test_a_lazy_torch_import_on_the_device_side_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "vitdeploy", tmp_path / "vitdeploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    reader = tmp_path / "vitdeploy" / "runtime" / "reader.py"
    reader.write_text(reader.read_text() + "\n\ndef _convenience():\n    import torch\n\n    return torch\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "vitdeploy.runtime is not allowed to import torch" in done.stdout
    assert "vitdeploy.runtime.reader -> torch" in done.stdout
    assert "2 broken" in done.stdout  # the torch contract and the device-side contract
