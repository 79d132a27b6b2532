"""The run-off: the candidates the screening could not tell apart, timed against the leader
until one is shown faster or the time is up.

Why: the screening times every candidate in a few short rounds against FP32. On a shared
2-core machine a one-second pair can read 0.97x or 2.73x for the same two files, so the
fastest-looking candidate is often fastest by a lucky round. The run-off times only the
finalists, each right after the leader, in blocks of rounds; after each block a finalist whose
interval of speed against the leader lies wholly below 1 is out, one wholly above 1 becomes the
leader, and one whose interval lies within 3 % of 1 is a tie (as fast, in practice). Those
still undecided when the time is up are a tie too.

The intervals are 99 % ones (Student's t over the rounds' log ratios): the decision is looked at
after every block, and each look is a chance to be fooled by noise; at 99 % a handful of looks
keeps the chance of calling two equally fast files different near 5 %.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Two-sided 99 % quantiles of Student's t, by degrees of freedom (the normal's beyond 30).
T99 = {1: 63.66, 2: 9.92, 3: 5.84, 4: 4.60, 5: 4.03, 6: 3.71, 7: 3.50, 8: 3.36, 9: 3.25, 10: 3.17,
       12: 3.05, 15: 2.95, 20: 2.85, 25: 2.79, 30: 2.75}  # fmt: skip
BLOCK = 6  # rounds timed between two decisions: 3 rounds leave Student's t at 9.9 (99 %), 6 at 4.0
MIN_ROUNDS = 6
AS_FAST = 0.97  # an interval within [0.97, 1/0.97] is a tie: no user would notice the difference


def t99(df: int) -> float:
    """The quantile for `df` degrees of freedom, rounded towards fewer (wider, the safe side)."""
    return T99[max(d for d in T99 if d <= df)] if df <= 30 else 2.576


@dataclass(frozen=True)
class RatioInterval:
    """Speed of one file against another: the geometric mean of paired ratios and its 99 % interval."""

    ratio: float
    lowest: float
    highest: float
    rounds: int

    @classmethod
    def of(cls, ratios: list[float]) -> RatioInterval:
        logs = [math.log(r) for r in ratios]
        mean = statistics.fmean(logs)
        half = t99(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
        return cls(round(math.exp(mean), 4), round(math.exp(mean - half), 4), round(math.exp(mean + half), 4), len(logs))

    @property
    def slower(self) -> bool:
        return self.highest < 1.0

    @property
    def faster(self) -> bool:
        return self.lowest > 1.0

    @property
    def as_fast(self) -> bool:
        return self.lowest >= AS_FAST and self.highest <= 1 / AS_FAST


@dataclass
class Finalist:
    name: str
    file: Path
    may_win: bool = True  # False: a reference timed for the report only (NNCF's PTQ over budget)
    ratios: list[float] = field(default_factory=list)  # per round: this file / the leader, geomean over cells
    settled: str | None = None  # the outcome an earlier run-off against the same leader reached

    def interval(self) -> RatioInterval | None:
        return RatioInterval.of(self.ratios) if len(self.ratios) >= MIN_ROUNDS else None


@dataclass(frozen=True)
class Comparison:
    versus: str  # the leader it was timed against
    speed: RatioInterval  # this file's speed / the leader's
    ratios: tuple[float, ...] = ()  # the rounds behind it


@dataclass
class RunOffResult:
    leader: str
    against: dict[str, Comparison]  # each finalist's speed against the leader it was last timed with
    outcome: dict[str, str]  # "slower", "tie" or "reference"
    seconds: float
    capped: bool


# Times `files` against `baseline` for `rounds` paired rounds: per file, one ratio per round
# (file / baseline, geometric mean over the cells). tune passes one that runs bench's grid.
PairedTimer = Callable[[Path, list[Path], int], dict[Path, list[float]]]


def run_off(leader: Finalist, finalists: list[Finalist], time_pairs: PairedTimer, cap_s: float) -> RunOffResult:
    """Time the finalists against the leader in blocks of rounds until each is decided or `cap_s` is spent."""
    start = time.perf_counter()
    out: dict[str, str] = {}
    against: dict[str, Comparison] = {}
    out |= {f.name: f.settled for f in finalists if f.settled}  # an earlier tune's verdict on the same pair
    against |= {f.name: comparison(leader, f) for f in finalists if f.settled and f.interval()}
    open_ = [f for f in finalists if not f.settled]
    leader, open_ = decide(leader, open_, out, against)  # earlier rounds may already decide
    capped, per_pair_block = False, None
    while open_:
        spent = time.perf_counter() - start
        # A block is started only if it fits what is left (the first always runs): the cap is kept, not overrun.
        if spent > cap_s or (per_pair_block is not None and spent + per_pair_block * len(open_) > cap_s):
            capped = True
            break
        block_start = time.perf_counter()
        measured = time_pairs(leader.file, [f.file for f in open_], BLOCK)
        per_pair_block = (time.perf_counter() - block_start) / len(open_)
        for f in open_:
            f.ratios += measured.get(f.file, [])
        leader, open_ = decide(leader, open_, out, against)
    for f in open_:
        out[f.name] = "tie" if f.may_win else "reference"
        if f.interval():
            against[f.name] = comparison(leader, f)
    return RunOffResult(leader.name, against, out, round(time.perf_counter() - start, 1), capped)


def comparison(leader: Finalist, f: Finalist) -> Comparison:
    return Comparison(leader.name, f.interval(), tuple(round(r, 4) for r in f.ratios))


def decide(leader: Finalist, open_: list[Finalist], out: dict[str, str], against: dict[str, Comparison]):
    """One decision after a block: the slower ones leave, a faster one that may win leads, and a
    reference (never chosen) leaves once it is known to be faster or slower."""
    still = []
    for f in open_:
        interval = f.interval()
        if interval is None:
            still.append(f)
            continue
        against[f.name] = comparison(leader, f)
        if interval.slower or (interval.faster and not f.may_win):
            out[f.name] = "slower" if f.may_win else "reference"
        elif interval.as_fast:
            out[f.name] = "tie" if f.may_win else "reference"
        elif interval.faster:
            # The new leader; the old one and every open finalist start their pairs afresh against it.
            against.pop(f.name)
            old = Finalist(leader.name, leader.file, leader.may_win)
            rest = [Finalist(g.name, g.file, g.may_win) for g in open_ if g is not f]
            out.pop(leader.name, None)
            return Finalist(f.name, f.file, f.may_win), [old, *rest]
        else:
            still.append(f)
    return leader, still
