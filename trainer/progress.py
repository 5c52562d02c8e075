"""Progress of training and of computes: a rich bar on a terminal, plain lines otherwise.

On a terminal the bar keeps its step count and times whole (the loss and evaluations give way
first when the terminal is narrow); when stdout is a file or a pipe (a sweep's log, CI), one line
is printed at most every `LINE_EVERY_S` seconds and at the end, flushed, in order.
"""

from __future__ import annotations

import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

LINE_EVERY_S = 5.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """Plain-text progress: `label done/total (pct) info, rate, time left`, at most every few seconds."""

    def __init__(self, label: str, total: int, start: int = 0, unit: str = "steps", stream=None):
        self.label, self.total, self.start, self.unit = label, total, start, unit
        self.stream = stream or sys.stdout
        self.done, self.info = start, ""
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int, info: str | None = None, *, final: bool = False) -> None:
        self.done = done
        if info is not None:
            self.info = info
        now = time.perf_counter()
        if not final and now - self.last < LINE_EVERY_S:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        when = _clock(left) if math.isfinite(left) else "-"
        extra = f" {self.info}" if self.info else ""
        print(f"{self.label} {done}/{self.total} ({pct:.0f}%){extra}, {rate:.1f} {self.unit}/s, {when} left",
              file=self.stream, flush=True)


def live_bar(label: str, info: bool = False) -> Progress:
    """A rich bar whose count and times never truncate (the info column gives way instead)."""
    fixed = Column(no_wrap=True)
    columns = [TextColumn(f"[bold]{label}", table_column=fixed), BarColumn(bar_width=24),
               MofNCompleteColumn(table_column=fixed)]
    if info:
        columns.append(TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                              ratio=1)))
    columns += [TimeElapsedColumn(table_column=fixed), TimeRemainingColumn(table_column=fixed)]
    return Progress(*columns, transient=False)


def is_terminal() -> bool:
    return Console().is_terminal


class TrainingProgress:
    """Context manager: the training bar (or plain lines off a terminal); a no-op when disabled."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True):
        self.enabled = enabled
        self.total, self.start = total, start
        self._loss, self._evals = float("nan"), ""
        self.live = enabled and is_terminal()
        self.lines = LineProgress("train", total, start) if enabled and not self.live else None
        self.progress = live_bar("train", info=True) if self.live else None

    def __enter__(self) -> "TrainingProgress":
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif self.lines is not None and exc[0] is None:
            self.lines.update(self.lines.done, self._info(), final=True)

    def _info(self) -> str:
        loss = f"loss {self._loss:.4f}" if math.isfinite(self._loss) else ""  # none yet at the first step
        return " ".join(p for p in (loss, self._evals) if p)

    def _show(self, step: int | None = None) -> None:
        if self.progress is not None:
            fields = {"info": self._info()} if step is None else {"completed": step, "info": self._info()}
            self.progress.update(self.task, **fields)
        elif self.lines is not None:
            self.lines.update(self.lines.done if step is None else step, self._info())

    def update(self, step: int, loss: float) -> None:
        self._loss = loss
        self._show(step)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)
        elif self.lines is not None:
            self.lines.update(step)

    def evals(self, values: dict[str, float]) -> None:
        shown = [(k, v) for k, v in values.items() if k.endswith("accuracy") or k.endswith("repeat_loss")][:3]
        self._evals = " ".join(f"{k.removeprefix('eval_')} {v:.3f}" for k, v in shown)
        self._show()
