"""One look for every long-running loop: a rich progress bar on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Progress(Progress):
    """Progress whose tasks always carry an `info` field (loss, accuracy, throughput)."""

    def add_task(self, description: str, *args, **fields):  # type: ignore[override]
        fields.setdefault("info", "")
        return super().add_task(description, *args, **fields)


def progress_bar(refresh_per_second: float = 10) -> Progress:
    """`refresh_per_second`: how often rich's thread redraws; timing loops want it rare."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        refresh_per_second=refresh_per_second,
    )
