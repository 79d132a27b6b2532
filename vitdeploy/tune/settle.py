"""After the screening: how sure tune is of each loss, the run-off between the leaders, and the
choice among those it cannot tell apart (the smaller file with fewer runtime needs)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.core.progress import console
from vitdeploy.tune.confidence import paired_drop, predicted_classes
from vitdeploy.tune.record import Tried
from vitdeploy.tune.runoff import AS_FAST, BLOCK, Finalist, PairedTimer, RunOffResult, run_off

if TYPE_CHECKING:
    from vitdeploy.tune.search import TuneSettings

SAME_SIZE = 1.02  # files within 2 % of the smallest are as small (same graph, other ranges)
# Seconds per file and cell in a run-off round: short pairs, many of them, each right after the
# leader's, so that the machine's slow phases hit both files alike. On the reference teacher
# (2-core AMD EPYC) a round's ratio varied by about 12 % either way at 1 s as at 0.25 s.
RUNOFF_PAIR_S = 0.25


# ---------------------------------------------------------------- accuracy


def add_drop_intervals(baseline: Tried, built: list[Tried], images, provider: str, batch: int, cache: Path) -> None:
    """Each candidate's loss against the FP32 candidate with its paired 95 % interval, from
    both files' predictions on the validation images (kept in `cache` by file hash)."""
    reference = cached_predictions(baseline, images, provider, batch, cache)
    for t in built:
        if t.file and t.drop is not None:
            t.drop_interval = paired_drop(reference, cached_predictions(t, images, provider, batch, cache), images.labels)


def cached_predictions(t: Tried, images, provider: str, batch: int, cache: Path) -> np.ndarray:
    path = cache / f"{t.sha256}.{provider}.{len(images)}.npy"
    if path.is_file():
        return np.load(path)
    found = predicted_classes(Path(t.file), provider, images, batch)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, found)
    return found


def mark_borderline(tried: list[Tried], eligible: list[Tried], winner: Tried, max_drop: float) -> None:
    """A candidate whose loss interval straddles the budget, with what counting it the other way would change."""
    for t in tried:
        if t.drop_interval is None or not t.drop_interval.straddles(max_drop) or t.error:
            continue
        interval = t.drop_interval.describe()
        if t is winner:
            rest = [e for e in eligible if e is not t]
            other = max(rest, key=lambda e: e.speedup()).name if rest else "FP32"
            t.what_if = f"loss {interval} straddles the budget: counted over it, {other} would be chosen"
        elif t.drop is not None and t.drop <= max_drop:  # within it, chosen or not for its speed
            t.what_if = f"loss {interval} straddles the budget: counted over it, the choice is unchanged"
        else:
            faster = t.speedup() > winner.speedup()
            change = f"it would be a finalist ({t.speedup():.2f}x FP32)" if faster else "the choice is unchanged (slower)"
            t.what_if = f"loss {interval} straddles the budget: counted within it, {change}"


# ---------------------------------------------------------------- speed


def finalists_of(leader: Tried, eligible: list[Tried]) -> list[Tried]:
    """The eligible candidates whose screening range reaches the leader's: the screening cannot rank them."""
    low = leader.speed_range()[0]
    return [t for t in eligible if t is not leader and t.speed_range()[1] >= low]


def settle(
    leader: Tried,
    eligible: list[Tried],
    reference: Tried | None,
    time_pairs: PairedTimer,
    cap_s: float,
    earlier: dict[str, Any] | None = None,
    block_s: float = 0.0,
) -> tuple[Tried, RunOffResult | None]:
    """The run-off between the leader and the finalists (and `reference`, NNCF's PTQ, always
    timed when given; chosen only if eligible); then the choice among the leader and its ties.

    `earlier`: an earlier run-off's record; its rounds against the same leader file are kept and
    the pairs it decided (a tie at its time cap too) are not timed again. `block_s`: the expected
    seconds of one block of rounds for one finalist, so that only as many enter as the cap lets
    be timed twice."""
    entrants = finalists_of(leader, eligible)
    if reference is not None and reference is not leader and reference not in entrants:
        entrants.append(reference)
    if not entrants:
        return leader, None
    entrants, left_out = fitting(entrants, reference, block_s, cap_s)
    for t in left_out:  # the screening could not rank them, nor did the time allow a run-off: the faster went first
        t.runoff = {"outcome": "not in the run-off: its time cap allowed the finalists faster by the screening",
                    "versus": leader.name, "speed": None}  # fmt: skip
    by_name = {t.name: t for t in [leader, *entrants]}
    console.rule(f"[bold]tune: run-off, {len(entrants)} against {leader.name} (at most {cap_s:.0f} s)")
    result = run_off(
        Finalist(leader.name, Path(leader.file)),
        [finalist(t, t in eligible, pairs_against(leader, earlier)) for t in entrants],
        time_pairs,
        cap_s,
    )
    leader = by_name[result.leader]
    winner = tie_break([leader, *as_fast_ties(result, by_name)])
    for name, t in by_name.items():
        t.runoff = runoff_record(name, result, winner)
    return winner, result


def fitting(entrants: list[Tried], reference: Tried | None, block_s: float, cap_s: float) -> tuple[list[Tried], list[Tried]]:
    """As many finalists as `cap_s` lets be timed two blocks each (at least one), the fastest by
    the screening first; the reference (NNCF's PTQ) always among them."""
    room = max(1, int(cap_s // (2 * block_s))) if block_s > 0 else len(entrants)
    ranked = sorted(entrants, key=lambda t: (t is not reference, -t.speedup()))
    return ranked[:room], ranked[room:]


def pairs_against(leader: Tried, earlier: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """An earlier run-off's pairs, by finalist file hash, when its leader was this same file."""
    if not earlier or earlier.get("leader_sha256") != leader.sha256:
        return {}
    return earlier.get("pairs", {})


def finalist(t: Tried, may_win: bool, earlier: dict[str, dict[str, Any]]) -> Finalist:
    pair = earlier.get(t.sha256 or "", {})
    return Finalist(t.name, Path(t.file), may_win, list(pair.get("ratios", [])), pair.get("outcome"))


def pairs_record(result: RunOffResult, by_name: dict[str, Tried]) -> dict[str, Any]:
    """What a later tune reuses: every pair timed against the final leader, with its outcome."""
    pairs = {
        by_name[name].sha256: {"ratios": list(c.ratios), "outcome": result.outcome.get(name)}
        for name, c in result.against.items()
        if c.versus == result.leader and result.outcome.get(name) in ("slower", "tie", "reference")
    }
    return {"leader_sha256": by_name[result.leader].sha256, "pairs": pairs}


def as_fast_ties(result: RunOffResult, by_name: dict[str, Tried]) -> list[Tried]:
    """The ties that measured as fast as the leader (within 3 %): only they can take its place.
    A finalist tied for want of rounds at the time cap, measured slower, leaves the win to the
    leader (on the reference teacher, 2-core AMD EPYC: static INT8 with bias correction at 0.85x
    (0.69-1.04) the dynamic leader, undecided after six rounds)."""
    tied = [n for n, outcome in result.outcome.items() if outcome == "tie"]
    return [by_name[n] for n in tied if n in result.against and result.against[n].speed.ratio >= AS_FAST]


def tie_break(tied: list[Tried]) -> Tried:
    """The smaller file, then fewer operators beyond standard ONNX, then the smaller loss."""
    smallest = min(t.bytes or 0 for t in tied)
    return min(tied, key=lambda t: ((t.bytes or 0) > SAME_SIZE * smallest, runtime_needs(t), t.drop or 0.0))


def runtime_needs(t: Tried) -> int:
    """Operators outside standard ONNX (ONNX Runtime's contrib operators): each one a runtime must provide."""
    from vitdeploy.pipeline.build import non_standard_ops

    return len(non_standard_ops(Path(t.file))) if t.file else 0


def runoff_record(name: str, result: RunOffResult, winner: Tried) -> dict[str, Any]:
    if name == result.leader:
        outcome = "winner" if name == winner.name else "fastest measured; a tie, lost to a smaller file"
        return {"outcome": outcome, "versus": None, "seconds": result.seconds, "capped": result.capped}
    compared = result.against.get(name)
    outcome = result.outcome.get(name, "slower")
    if name == winner.name:
        outcome = "winner (a tie with the fastest measured, the smaller file)"
    speed = asdict(compared.speed) if compared else None
    return {"outcome": outcome, "versus": compared.versus if compared else result.leader, "speed": speed,
            "seconds": result.seconds, "capped": result.capped}  # fmt: skip


# ---------------------------------------------------------------- the choice


def runoff_cap(search_s: float) -> float:
    """A fifth of the search so far, 20 s to 10 minutes: the run-off must not be what a tune costs."""
    return min(600.0, max(20.0, 0.2 * search_s))


def eligible_candidates(tried: list[Tried], baseline: Tried, settings: TuneSettings) -> list[Tried]:
    """The candidates within the budget that pay against FP32; every other one gets its verdict.

    Pays: faster than FP32 over the cells (geometric mean of the paired speedups above 1) and
    not measurably slower in any (each cell's median at least `AS_FAST`)."""
    eligible = []
    for t in tried:
        if t is baseline or t.error:
            t.verdict = t.verdict or ("the baseline" if t is baseline else f"failed: {t.error}")
            continue
        if t.drop is None or t.drop > settings.max_drop:
            t.verdict = f"over budget: {t.drop:.2f} points lost > {settings.max_drop:g}"
            continue
        if len(t.speeds) < len(settings.providers) * len(settings.batches):
            t.verdict = "not timed"
            continue
        worst = min(t.speeds, key=lambda s: s.speedup)
        if worst.speedup < AS_FAST:
            t.verdict = f"slower than FP32 at {worst.cell} ({worst.speedup:.2f}x)"
            continue
        if t.speedup() <= 1.0:
            t.verdict = f"no faster than FP32 ({t.speedup():.2f}x over the cells)"
            continue
        eligible.append(t)
    return eligible


def choose(tried: list[Tried], baseline: Tried, settings: TuneSettings) -> Tried:
    """The screening's choice: the fastest candidate within the budget that pays, else FP32.

    Candidates within `AS_FAST` of the fastest are as fast as it, and the smallest loss among
    them wins. Why the tolerance: variants with the same graph (static INT8 with other ranges)
    run at the same speed and their measured speedups differ by the machine's noise; on the
    reference teacher at batch 1 (2-core Intel Xeon) five such variants measured 0.98x to 1.02x.
    The run-off (`settle`) then times the leaders against this one."""
    eligible = eligible_candidates(tried, baseline, settings)
    if not eligible:
        baseline.verdict = "chosen: no INT8 candidate within the budget is faster than FP32 on this machine"
        return baseline
    fastest = max(t.speedup() for t in eligible)
    as_fast = [t for t in eligible if t.speedup() >= AS_FAST * fastest]
    winner = min(as_fast, key=lambda t: (t.drop, -t.speedup()))
    for t in eligible:
        t.verdict = f"within budget, {t.speedup():.2f}x FP32" + (" (as fast as the fastest)" if t in as_fast else "")
    winner.verdict = f"chosen: {winner.speedup():.2f}x FP32, the smallest loss of the fastest"
    return winner


def run_off_leaders(
    leader: Tried, tried: list[Tried], baseline: Tried, settings: TuneSettings, cap_s: float, earlier: dict | None = None
) -> tuple[Tried, dict | None]:
    """The run-off after the screening: the winner and the run-off's record (for tune.json and a later tune)."""
    eligible = [t for t in tried if t.verdict.startswith(("within budget", "chosen")) and t is not baseline]
    reference = next((t for t in tried if t.candidate.name == "nncf" and t.speeds and not t.error), None)
    if leader is baseline:
        return leader, None
    from vitdeploy.tune.timing import bench_timer

    timer = bench_timer(settings.providers, settings.batches, settings.threads, min(settings.duration_s, RUNOFF_PAIR_S))
    cells = len(settings.providers) * len(settings.batches)
    block_s = cells * 2 * BLOCK * (RUNOFF_PAIR_S + 0.15)  # each cell: the leader, then the finalist; 0.15 s to open each
    winner, result = settle(leader, eligible, reference, timer, cap_s, None if settings.remeasure else earlier, block_s)
    if result is None:
        return winner, None
    by_name = {t.name: t for t in tried}
    for t in eligible:
        if t.runoff:
            t.verdict = runoff_verdict(t, winner)
    if reference is not None and reference not in eligible and reference.runoff:
        reference.verdict += f"; timed in the run-off for reference: {speed_text(reference)}"
    summary = {"leader": result.leader, "seconds": result.seconds, "capped": result.capped, "cap_s": round(cap_s, 1)}
    return winner, summary | pairs_record(result, by_name)


def speed_text(t: Tried) -> str:
    runoff = t.runoff or {}
    speed = runoff.get("speed")
    if not speed:
        return "not timed against the leader"
    return f"{speed['ratio']:.2f}x ({speed['lowest']:.2f}-{speed['highest']:.2f}) {runoff['versus']}"


def runoff_verdict(t: Tried, winner: Tried) -> str:
    outcome = t.runoff["outcome"]
    if t is winner:
        return f"chosen: {t.speedup():.2f}x FP32; run-off: {outcome}"
    if outcome == "tie":
        return f"within budget, {t.speedup():.2f}x FP32; run-off: a tie with the winner, {speed_text(t)}"
    if outcome == "slower":
        return f"within budget, {t.speedup():.2f}x FP32; run-off: slower, {speed_text(t)}"
    return f"within budget, {t.speedup():.2f}x FP32; run-off: {outcome}"
