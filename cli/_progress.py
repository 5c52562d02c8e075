"""Progress bars of the command line, fed by the library's callbacks: a rich bar on a terminal
(count, rate, times), plain lines when stdout is a file or a pipe (a sweep's log, CI).

On a terminal the bar keeps its count and times whole (the loss and evaluations give way first when
the terminal is narrow); off a terminal one line is printed at most every `LINE_EVERY_S` seconds and
at the end, flushed, in order.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Column
from rich.text import Text

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
        self.printed: tuple[int, str] | None = None  # the last line's count and info

    def update(self, done: int, info: str | None = None, *, final: bool = False) -> None:
        self.done = done
        if info is not None:
            self.info = info
        now = time.perf_counter()
        if (not final and now - self.last < LINE_EVERY_S) or (final and self.printed == (done, self.info)):
            return  # too soon, or the final line is already printed
        self.last, self.printed = now, (done, self.info)
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        when = _clock(left) if math.isfinite(left) else "-"
        extra = f" {self.info}" if self.info else ""
        print(f"{self.label} {done}/{self.total} ({pct:.0f}%){extra}, {rate:.1f} {self.unit}/s, {when} left",
              file=self.stream, flush=True)


class RateColumn(ProgressColumn):
    """Units per second."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


def live_bar(label: str, *, info: bool = False, rate_unit: str | None = None) -> Progress:
    """A rich bar whose count and times never truncate (the info column gives way instead)."""
    fixed = Column(no_wrap=True)
    columns = [TextColumn(f"[bold]{label}", table_column=fixed), BarColumn(bar_width=24),
               MofNCompleteColumn(table_column=fixed)]
    if rate_unit:
        columns.append(RateColumn(rate_unit))
    if info:
        columns.append(TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                              ratio=1)))
    columns += [TimeElapsedColumn(table_column=fixed), TimeRemainingColumn(table_column=fixed)]
    return Progress(*columns, transient=False)


def is_terminal() -> bool:
    return Console().is_terminal


class _Bar:
    """A bar made when its total is known: rich on a terminal, plain lines otherwise, nothing when
    disabled; a context manager that closes it (the plain lines end with a final line)."""

    def __init__(self, label: str, *, enabled: bool, info: bool = False, rate_unit: str | None = None):
        self.label, self.enabled, self.info, self.rate_unit = label, enabled, info, rate_unit
        self.started = False
        self.progress: Progress | None = None
        self.lines: LineProgress | None = None

    def _open(self, total: int, start: int = 0) -> None:
        self.started = True
        if not self.enabled or total <= 0:
            return
        if is_terminal():
            self.progress = live_bar(self.label, info=self.info, rate_unit=self.rate_unit)
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=total, completed=start, info="")
        else:
            self.lines = LineProgress(self.label, total, start, unit=self.rate_unit or "steps")

    def _show(self, done: int, info: str | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, **({} if info is None else {"info": info}))
        elif self.lines is not None:
            self.lines.update(done, info)

    def _final_info(self) -> str | None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif self.lines is not None and exc[0] is None:
            self.lines.update(self.lines.done, self._final_info(), final=True)


class CountProgress(_Bar):
    """Context manager; `update(done, total)` sets how many of `total` units (cells, runs) are done so far.
    With `total=None` the bar is made at the first update that names a total (none for a total of 0)."""

    def __init__(self, total: int | None = None, *, enabled: bool = True, label: str = "cells", unit: str = "cells"):
        super().__init__(label, enabled=enabled, rate_unit=unit)
        if total is not None:
            self._open(total)

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and not self.started:
            self._open(total)
        self._show(done)


class TrainingProgress(_Bar):
    """Context manager and `train(on_progress=...)` callback: the training bar (or plain lines off a
    terminal), made at the first step it hears of (so a resumed run's bar starts where it resumed)."""

    def __init__(self, *, enabled: bool = True):
        super().__init__("train", enabled=enabled, info=True)
        self._loss, self._evals = float("nan"), ""

    def __call__(self, step: int, total: int, values: Mapping[str, float]) -> None:
        if not self.started:
            self._open(total, step)
        if "train_loss" in values:
            self._loss = values["train_loss"]
        evals = [(k, v) for k, v in values.items() if k.endswith("accuracy") or k.endswith("repeat_loss")][:3]
        if evals:
            self._evals = " ".join(f"{k.removeprefix('eval_')} {v:.3f}" for k, v in evals)
        self._show(step, self._info())

    def _final_info(self) -> str:
        return self._info()

    def _info(self) -> str:
        loss = f"loss {self._loss:.4f}" if math.isfinite(self._loss) else ""  # none yet at the first step
        return " ".join(p for p in (loss, self._evals) if p)
