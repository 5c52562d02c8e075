"""Progress off a terminal is plain, ordered lines (a piped sweep or CI log shows it as it goes)."""

from __future__ import annotations

import io
import subprocess
import sys

import cli._progress as progress
from cli._progress import CountProgress, LineProgress, TrainingProgress


def test_line_progress_prints_at_most_every_few_seconds_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 7.0, 8.0, 9.0, 10.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = LineProgress("cells", 100, unit="cells", stream=out)  # t0 = 0
    lines.update(10)  # 1 s: too soon
    lines.update(20)  # 2 s: too soon
    lines.update(70, "loss 1.2")  # 7 s: printed
    lines.update(80)  # 8 s: too soon
    lines.update(100, final=True)  # 9 s: the last one always
    lines.update(100, final=True)  # but not twice
    text = out.getvalue().splitlines()
    assert text == ["cells 70/100 (70%) loss 1.2, 10.0 cells/s, 0:00:03 left",
                    "cells 100/100 (100%) loss 1.2, 11.1 cells/s, 0:00:00 left"]


def test_training_progress_off_a_terminal_has_no_nan_loss_before_the_first_step(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stdout", out)
    with TrainingProgress() as bar:
        bar(3, 10, {})  # a resumed run: the line count starts at its first step
        assert bar._info() == ""
        bar(5, 10, {"train_loss": 1.5, "eval_accuracy": 0.25})
    assert out.getvalue().splitlines()[-1].startswith("train 5/10 (50%) loss 1.5000 accuracy 0.250,")


def test_a_count_without_a_total_starts_at_its_first_update_and_none_for_nothing(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stdout", out)
    with CountProgress(label="runs", unit="runs") as bar:
        pass
    with CountProgress(label="runs", unit="runs") as bar:
        bar.update(0, 4)
        bar.update(4)
    assert len(out.getvalue().splitlines()) == 1 and out.getvalue().startswith("runs 4/4 (100%)")


def test_training_reports_every_step_with_its_losses_and_evaluations(tmp_path):
    """The library draws nothing: it calls `on_progress` at each step, with the metrics of that step."""
    from trainer.config import resolve_config
    from trainer.train import train

    from tests.conftest import TINY_OVERRIDES

    heard = []
    train(resolve_config("induction-tiny", None, [*TINY_OVERRIDES, "train.steps=20"]), tmp_path / "run",
          on_progress=lambda step, total, values: heard.append((step, total, dict(values))))
    steps = [s for s, _, _ in heard]
    assert steps[0] == 0 and steps[-1] == 20 and set(steps) == set(range(21)) and {t for _, t, _ in heard} == {20}
    losses = [s for s, _, v in heard if "train_loss" in v]
    evals = [s for s, _, v in heard if any(k.startswith("eval_") for k in v)]
    assert losses == [5, 10, 15, 20] and evals == [0, 20]  # log_every=5, eval_every=20


def test_piped_compute_prints_plain_progress(tiny_run, copy_run):
    run = copy_run(tiny_run)
    res = subprocess.run([sys.executable, "-m", "cli.app", "compute", str(run), "--type", "loss"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "cells 7/7 (100%)" in res.stdout and "━" not in res.stdout  # no bar drawn into a pipe
