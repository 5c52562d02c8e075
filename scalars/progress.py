"""A rich progress bar over (type, step) cells: done / total, rate, ETA."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Cells per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} cells/s" if task.speed else "- cells/s")


class CellProgress:
    """Context manager; `update(done)` sets the number of cells computed so far."""

    def __init__(self, total: int, *, enabled: bool = True, label: str = "cells"):
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )
        self.total = total

    def __enter__(self) -> "CellProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)
