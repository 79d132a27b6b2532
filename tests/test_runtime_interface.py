"""The runtime interface as a contract: outside the runtime layer (`vitdeploy/runtime/`), the
provider registry and the recipe schema, no code compares a runtime's or a provider's name.
Callers ask the provider's facts (`vitdeploy.core.providers`) or its backend
(`vitdeploy.runtime.backends`), so a new runtime is one backend module and its registry entry."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vitdeploy.core.providers import PROVIDERS, get_provider, recipe_targets, target_provider
from vitdeploy.runtime.backends import backend_for
from vitdeploy.runtime.backends.base import Backend, TimingSettings

PACKAGE = Path(__file__).resolve().parents[1] / "vitdeploy"
ALLOWED = ("runtime/", "core/providers.py", "recipe/schema.py")
NAMES = {n for p in PROVIDERS.values() for n in (p.name, p.runtime, p.execution_provider, p.target) if n}


def _strings(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for e in node.elts for s in _strings(e)}
    return set()


def _is_torch_device_type(node: ast.expr) -> bool:
    # `device.type == "cuda"` names PyTorch's device, not a runtime.
    return isinstance(node, ast.Attribute) and node.attr == "type"


def runtime_name_comparisons(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if any(_is_torch_device_type(o) for o in operands):
            continue
        named = set().union(*(_strings(o) for o in operands)) & NAMES
        if named:
            found.append(f"{filename}:{node.lineno} compares {sorted(named)}")
    return found


def test_no_runtime_name_is_compared_outside_the_runtime_interface() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(ALLOWED):
            found += runtime_name_comparisons(path.read_text(), rel)
    assert not found, "\n".join(found)


def test_the_check_finds_a_runtime_name_compared() -> None:
    code = 'def f(r, p):\n    if r != "onnxruntime":\n        pass\n    return p in ("cuda", "tensorrt")\n'
    assert len(runtime_name_comparisons(code, "x.py")) == 2
    assert not runtime_name_comparisons('def f(d):\n    return d.type == "cuda"\n', "x.py")


def test_every_provider_has_a_backend_that_says_whether_it_runs_here() -> None:
    for provider in PROVIDERS.values():
        backend = backend_for(provider)
        assert isinstance(backend, Backend)
        reason = backend.missing_reason(provider)
        assert reason is None or (isinstance(reason, str) and reason)
    assert backend_for("cpu").missing_reason(get_provider("cpu")) is None
    assert backend_for("cpu").version()


def test_a_recipe_runtime_names_its_provider_and_back() -> None:
    for provider in PROVIDERS.values():
        if provider.target:
            assert target_provider(provider.target) is provider
    assert recipe_targets(("cpu", "cuda", "openvino")) == ["onnxruntime", "openvino"]


def _matmul_model(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("name", ["cpu", "openvino"])
def test_each_backend_predicts_and_times_the_same_function(name: str, tmp_path: Path) -> None:
    provider = get_provider(name)
    backend = backend_for(provider)
    if backend.missing_reason(provider):
        pytest.skip(backend.missing_reason(provider))
    model = _matmul_model(tmp_path / "m.onnx")
    x = np.ones((2, 4), np.float32)
    predictor = backend.open_predictor(model, provider, 1)
    np.testing.assert_allclose(predictor(x), x @ np.arange(12, dtype=np.float32).reshape(4, 3), rtol=1e-5)
    assert predictor.input_shape[1] == 4
    timed = backend.open_timed(model, provider, 2, 1, TimingSettings())
    timed.run()
