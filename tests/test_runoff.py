"""tune's run-off and its confidence in each loss: the decisions on known speeds, then on real
files timed by the same bench rounds tune uses."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitdeploy.tune.confidence import paired_drop
from vitdeploy.tune.record import Tried
from vitdeploy.tune.runoff import Finalist, RatioInterval, run_off
from vitdeploy.tune.settle import tie_break
from vitdeploy.tune.space import Candidate


def timer_for(speeds: dict[Path, float], noise: float = 0.01, calls: list | None = None, seconds: float = 0.0):
    """Paired rounds of files whose true speeds are known, with alternating noise of `noise` (in
    logs, so it averages out), each block taking `seconds`."""

    def time_pairs(leader: Path, files: list[Path], rounds: int) -> dict[Path, list[float]]:
        if calls is not None:
            calls.append((leader, tuple(files)))
        time.sleep(seconds)
        return {f: [speeds[f] / speeds[leader] * math.exp(noise * (-1) ** k) for k in range(rounds)] for f in files}

    return time_pairs


def test_a_faster_finalist_becomes_the_leader_and_the_slower_ones_leave() -> None:
    lead, slow, fast = Path("lead"), Path("slow"), Path("fast")
    speeds = {lead: 1.0, slow: 0.8, fast: 1.25}
    result = run_off(Finalist("lead", lead), [Finalist("slow", slow), Finalist("fast", fast)], timer_for(speeds), cap_s=60)
    assert result.leader == "fast" and not result.capped
    assert result.outcome == {"slow": "slower", "lead": "slower"}
    assert 0.78 < result.against["lead"].speed.ratio < 0.82 and result.against["lead"].versus == "fast"


def test_equally_fast_files_are_a_tie_and_undecided_ones_are_a_tie_at_the_time_cap() -> None:
    a, b = Path("a"), Path("b")
    level = run_off(Finalist("a", a), [Finalist("b", b)], timer_for({a: 1.0, b: 1.005}), cap_s=60)
    assert level.outcome == {"b": "tie"} and not level.capped and level.against["b"].speed.as_fast
    noisy = run_off(Finalist("a", a), [Finalist("b", b)], timer_for({a: 1.0, b: 1.05}, noise=0.3), cap_s=0)
    assert noisy.outcome == {"b": "tie"} and noisy.capped


def test_a_reference_is_timed_but_never_leads() -> None:
    lead, nncf = Path("lead"), Path("nncf")
    result = run_off(Finalist("lead", lead), [Finalist("nncf", nncf, may_win=False)], timer_for({lead: 1.0, nncf: 1.3}), 60)
    assert result.leader == "lead" and result.outcome == {"nncf": "reference"} and result.against["nncf"].speed.faster


def test_pairs_an_earlier_run_off_decided_are_not_timed_again() -> None:
    lead, slow = Path("lead"), Path("slow")
    calls: list = []
    earlier = Finalist("slow", slow, ratios=[0.8, 0.81, 0.79], settled="slower")
    result = run_off(Finalist("lead", lead), [earlier], timer_for({lead: 1.0, slow: 0.8}, calls=calls), cap_s=60)
    assert calls == [] and result.outcome == {"slow": "slower"}


def test_the_interval_narrows_with_rounds_and_is_wide_on_few() -> None:
    few, many = RatioInterval.of([1.1, 0.9, 1.2]), RatioInterval.of([1.1, 0.9, 1.2] * 10)
    assert few.lowest < 1.0 < few.highest and many.highest - many.lowest < few.highest - few.lowest


def test_a_paired_loss_interval_counts_the_images_the_files_disagree_on() -> None:
    labels = np.zeros(1000, dtype=np.int64)
    reference = np.where(np.arange(1000) < 770, 0, 1)  # 77.0 % right
    candidate = reference.copy()
    candidate[:10] = 1  # ten images lost
    candidate[900:902] = 0  # two gained
    drop = paired_drop(reference, candidate, labels)
    # 12 disagreements: about +-0.7 points, where two independent binomial intervals would give +-3.7
    assert drop.drop == 0.8 and drop.lowest < 0.8 < drop.highest and drop.highest - drop.lowest < 1.5
    assert drop.straddles(0.5) and not drop.straddles(2.0)
    same = paired_drop(reference, reference, labels)
    assert same.drop == 0.0 and same.lowest < 0 < same.highest  # never certainty from zero flips


def _matmuls(path: Path, count: int, contrib: bool = False) -> Path:
    """A chain of `count` 256x256 MatMuls (standard ONNX, or with one ONNX Runtime contrib Gelu)."""
    rng = np.random.default_rng(0)
    inits, nodes, name = [], [], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"]))
        name = f"h{i}"
    if contrib:
        nodes.append(helper.make_node("Gelu", [name], ["g"], domain="com.microsoft"))
        name = "g"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])], inits)  # fmt: skip
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def test_the_run_off_on_real_files_finds_the_faster_one(tmp_path: Path) -> None:
    from vitdeploy.tune.timing import bench_timer

    slow, fast = _matmuls(tmp_path / "slow.onnx", 24), _matmuls(tmp_path / "fast.onnx", 2)
    timer = bench_timer(("cpu",), (8,), 1, 0.1)
    result = run_off(Finalist("slow", slow), [Finalist("fast", fast)], timer, cap_s=60)
    assert result.leader == "fast" and result.outcome == {"slow": "slower"}
    assert result.against["slow"].speed.highest < 0.5  # 2 MatMuls against 24


def test_a_tie_goes_to_the_smaller_file_then_to_fewer_runtime_needs(tmp_path: Path) -> None:
    def t(name: str, file: Path, drop: float) -> Tried:
        return Tried(Candidate(name, name), name, drop=drop, file=str(file), bytes=file.stat().st_size)

    big, small = _matmuls(tmp_path / "big.onnx", 4), _matmuls(tmp_path / "small.onnx", 2)
    contrib = _matmuls(tmp_path / "contrib.onnx", 2, contrib=True)
    assert tie_break([t("big", big, 0.0), t("small", small, 0.3)]).name == "small"
    assert tie_break([t("contrib", contrib, 0.0), t("small", small, 0.3)]).name == "small"  # same size, no contrib op
    assert tie_break([t("a", small, 0.3), t("b", small, 0.1)]).name == "b"  # same file size and needs: the smaller loss


def test_a_tie_measured_slower_leaves_the_win_to_the_leader(tmp_path: Path) -> None:
    from vitdeploy.tune.record import Speed
    from vitdeploy.tune.settle import settle

    def t(name: str, file: Path, drop: float, speed: float) -> Tried:
        found = Tried(Candidate(name, name), name, drop=drop, file=str(file), bytes=file.stat().st_size, sha256=name)
        found.speeds = [Speed("cpu", 1, speed, speed * 0.7, speed * 1.3, 100.0, "now")]
        return found

    contrib = t("dynamic", _matmuls(tmp_path / "d.onnx", 2, contrib=True), 0.0, 1.4)
    slower_std = t("static", _matmuls(tmp_path / "s.onnx", 2), 0.0, 1.2)
    level_std = t("static-b", _matmuls(tmp_path / "b.onnx", 2), 0.1, 1.3)
    speeds = {Path(contrib.file): 1.0, Path(slower_std.file): 0.85, Path(level_std.file): 0.995}
    noisy = timer_for(speeds, noise=0.4, seconds=0.2)  # one block fits the cap, too noisy to decide: ties
    winner, result = settle(contrib, [contrib, slower_std, level_std], None, noisy, cap_s=0.3)
    assert result.outcome == {"static": "tie", "static-b": "tie"} and result.capped
    # the tie measured as fast as the leader takes it (no contrib operator); the slower one cannot
    assert winner is level_std
    winner, _ = settle(contrib, [contrib, slower_std], None, noisy, cap_s=0.3)
    assert winner is contrib


def test_a_borderline_loss_says_what_the_other_decision_would_change() -> None:
    from vitdeploy.tune.confidence import DropInterval
    from vitdeploy.tune.record import Speed
    from vitdeploy.tune.settle import mark_borderline

    def t(name: str, drop: float, low: float, high: float, speed: float) -> Tried:
        found = Tried(Candidate(name, name), name, drop=drop, drop_interval=DropInterval(drop, low, high, 1000))
        found.speeds = [Speed("cpu", 1, speed, speed, speed, 1.0, "now")]
        return found

    winner, runner_up = t("win", 0.2, -0.1, 0.5, 1.5), t("second", 0.0, -0.3, 0.3 + 0.01, 1.3)
    sure, over_but_fast = t("sure", 0.0, -0.1, 0.1, 1.2), t("lossy", 0.4, 0.1, 0.7, 2.0)
    mark_borderline([winner, runner_up, sure, over_but_fast], [winner, runner_up], winner, max_drop=0.3)
    assert "counted over it, second would be chosen" in winner.what_if
    assert "counted over it, the choice is unchanged" in runner_up.what_if
    assert sure.what_if is None  # its interval lies within the budget
    assert "counted within it, it would be a finalist (2.00x FP32)" in over_but_fast.what_if
