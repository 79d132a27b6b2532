"""What tune records of each candidate: its accuracy, its speed in every cell, and how it fared."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from vitdeploy.tune.confidence import DropInterval
from vitdeploy.tune.space import Candidate


@dataclass
class Speed:
    """One cell: the candidate's throughput / FP32's, median of back-to-back pairs, and their range."""

    provider: str
    batch: int
    speedup: float
    lowest: float
    highest: float
    images_per_s: float
    measured: str  # when, ISO time: timings of an earlier tune are reused

    @property
    def cell(self) -> str:
        return f"{self.provider} b{self.batch}"


@dataclass
class Tried:
    candidate: Candidate
    name: str  # the candidate's artifact name
    top1: float | None = None  # validation top-1 (%) of its ONNX file
    drop: float | None = None  # points below the FP32 candidate
    file: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    speeds: list[Speed] = field(default_factory=list)
    verdict: str = ""
    error: str | None = None
    fp32_file: str | None = None  # the float file an INT8 candidate was quantized from
    drop_interval: DropInterval | None = None  # the loss's 95 % interval, paired image by image
    what_if: str | None = None  # borderline: what deciding the budget the other way would change
    runoff: dict[str, Any] | None = None  # finalists: speed against the leader, and the outcome

    def speedup(self) -> float:
        """Geometric mean over the measured cells (1.0 for the float baseline)."""
        if not self.speeds:  # the baseline
            return 1.0
        return geomean(s.speedup for s in self.speeds)

    def speed_range(self) -> tuple[float, float]:
        """The screening's range over its pairs, as geometric means over the cells of each cell's lowest and highest."""
        if not self.speeds:
            return 1.0, 1.0
        return geomean(s.lowest for s in self.speeds), geomean(s.highest for s in self.speeds)

    def record(self) -> dict:
        return {
            "name": self.candidate.name,
            "student": self.candidate.student,
            "idea": self.candidate.idea,
            "quantize": self.candidate.quantize,
            "artifact": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "validation_top1": self.top1,
            "drop": self.drop,
            "speed": [asdict(s) for s in self.speeds],
            "speedup_geomean": round(self.speedup(), 4) if self.speeds else None,
            "drop_interval": asdict(self.drop_interval) if self.drop_interval else None,
            "borderline": self.what_if,
            "runoff": self.runoff,
            "verdict": self.verdict,
            "error": self.error,
        }


def geomean(values) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))
