"""Writers for `vitdeploy predict`: plain text, JSON Lines or CSV, streamed row by row.

To a file, rows go to a temporary file renamed into place at the end: an interrupted run
leaves no half-written results file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from vitdeploy.core.storage import atomic_path
from vitdeploy.runtime.predict import Prediction
from vitdeploy.runtime.reader import Failure

Writer = Callable[[Prediction | Failure], None]


def text_row(item: Prediction | Failure) -> str:
    if isinstance(item, Failure):
        return f"{item.path}\terror: {item.reason}"
    ranked = "  ".join(f"{label} {p:.3f}" for label, p in zip(item.labels, item.probabilities, strict=True))
    return f"{item.path}\t{ranked}"


def json_row(item: Prediction | Failure) -> str:
    if isinstance(item, Failure):
        return json.dumps({"path": str(item.path), "error": item.reason})
    top = [{"label": label, "probability": round(p, 6)} for label, p in zip(item.labels, item.probabilities, strict=True)]
    return json.dumps({"path": str(item.path), "top": top, "folder_label": item.truth})


def csv_writer(stream: TextIO, top_k: int) -> Writer:
    writer = csv.writer(stream)
    writer.writerow(["path", *[f"{c}_{i}" for i in range(1, top_k + 1) for c in ("label", "probability")], "error"])

    def write(item: Prediction | Failure) -> None:
        if isinstance(item, Failure):
            writer.writerow([str(item.path), *[""] * (2 * top_k), item.reason])
            return
        cells = [v for label, p in zip(item.labels, item.probabilities, strict=True) for v in (label, f"{p:.6f}")]
        writer.writerow([str(item.path), *cells, *[""] * (2 * top_k - len(cells)), ""])

    return write


@contextlib.contextmanager
def result_writer(output: Path | None, fmt: str, top_k: int) -> Iterator[Writer]:
    with contextlib.ExitStack() as stack:
        if output is None:
            stream: TextIO = sys.stdout
        else:
            tmp = stack.enter_context(atomic_path(output))
            stream = stack.enter_context(tmp.open("w", newline="" if fmt == "csv" else None))
        if fmt == "csv":
            yield csv_writer(stream, top_k)
            return
        line = json_row if fmt == "json" else text_row
        yield lambda item: print(line(item), file=stream)
