"""A rich progress bar for training: step, rate, ETA, the latest loss and evaluations."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    """Context manager around `rich.progress.Progress`; a no-op when disabled."""

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True):
        self.enabled = enabled
        self.total, self.start = total, start
        self._loss, self._evals = float("nan"), ""
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
        )

    def __enter__(self) -> "TrainingProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _info(self) -> str:
        return f"loss {self._loss:.4f} {self._evals}"

    def update(self, step: int, loss: float) -> None:
        self._loss = loss
        self.progress.update(self.task, completed=step, info=self._info())

    def advance(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def evals(self, values: dict[str, float]) -> None:
        shown = [(k, v) for k, v in values.items() if k.endswith("accuracy") or k.endswith("repeat_loss")][:3]
        self._evals = " ".join(f"{k} {v:.3f}" for k, v in shown)
        self.progress.update(self.task, info=self._info())
