"""Progress off a terminal is plain, ordered lines (a piped sweep or CI log shows it as it goes)."""

from __future__ import annotations

import io
import subprocess
import sys

import trainer.progress as progress
from trainer.progress import LineProgress, TrainingProgress


def test_line_progress_prints_at_most_every_few_seconds_and_at_the_end(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 7.0, 8.0, 9.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = LineProgress("cells", 100, unit="cells", stream=out)  # t0 = 0
    lines.update(10)  # 1 s: too soon
    lines.update(20)  # 2 s: too soon
    lines.update(70, "loss 1.2")  # 7 s: printed
    lines.update(80)  # 8 s: too soon
    lines.update(100, final=True)  # 9 s: the last one always
    text = out.getvalue().splitlines()
    assert text == ["cells 70/100 (70%) loss 1.2, 10.0 cells/s, 0:00:03 left",
                    "cells 100/100 (100%) loss 1.2, 11.1 cells/s, 0:00:00 left"]


def test_training_progress_off_a_terminal_has_no_nan_loss_before_the_first_step(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    bar = TrainingProgress(10)
    assert bar._info() == ""
    bar._loss = 1.5
    assert bar._info() == "loss 1.5000"


def test_piped_compute_prints_plain_progress(tiny_run, copy_run):
    run = copy_run(tiny_run)
    res = subprocess.run([sys.executable, "-m", "cli.app", "compute", str(run), "--type", "loss"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "cells 7/7 (100%)" in res.stdout and "━" not in res.stdout  # no bar drawn into a pipe
