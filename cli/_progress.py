"""Progress over (type, step) cells: a rich bar on a terminal (done / total, rate, ETA), plain lines
otherwise (see `trainer.progress`)."""

from __future__ import annotations

from rich.progress import ProgressColumn
from rich.text import Text

from trainer.progress import LineProgress, is_terminal, live_bar


class RateColumn(ProgressColumn):
    """Cells per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} cells/s" if task.speed else "- cells/s")


class CellProgress:
    """Context manager; `update(done)` sets the number of cells computed so far."""

    def __init__(self, total: int, *, enabled: bool = True, label: str = "cells"):
        self.total = total
        live = enabled and is_terminal()
        self.progress = live_bar(label) if live else None
        if self.progress is not None:
            self.progress.columns = (*self.progress.columns[:3], RateColumn(), *self.progress.columns[3:])
        self.lines = LineProgress(label, total, unit="cells") if enabled and not live else None

    def __enter__(self) -> "CellProgress":
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif self.lines is not None and exc[0] is None:
            self.lines.update(self.lines.done, final=True)

    def update(self, done: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done)
        elif self.lines is not None:
            self.lines.update(done)
