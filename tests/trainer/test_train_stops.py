"""Training that diverges stops at once and says so; resuming a finished run says it is finished."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import store

from tests.conftest import TINY_OVERRIDES


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_loss_that_turns_nan_stops_training_and_keeps_the_good_checkpoints(tmp_path):
    over = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    res = cli("train", "--preset", "induction-tiny", *over, "--set", "train.lr=1e30", "--set", "train.grad_clip=null",
              "--out", str(tmp_path / "run"), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "the training loss became nan at step" in line, line
    bad = int(line.split("at step ")[1].split(",")[0])
    archive = store.open_archive(tmp_path / "run")
    assert archive.steps.tolist() and int(archive.steps[-1]) <= bad < 60
    assert all(np.isfinite(v).all() for v in archive.load(int(archive.steps[-1])).values())
    losses = store.open_metrics(tmp_path / "run")["train_loss"]
    assert int(losses.step[-1]) == bad - 1 and np.isfinite(losses.values).all()
    assert store.verify_archive(tmp_path / "run") == []


def test_resume_of_a_finished_run_says_it_is_finished(tiny_run, copy_run):
    run = copy_run(tiny_run)
    before = sorted(p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "lock" not in p.name)
    res = cli("train", "--resume", str(run), "-q")
    assert res.returncode == 0, res.stderr
    out = res.stdout.replace("\n", " ")
    assert "is already finished (its checkpoint at train.steps=60 is stored); nothing to resume" in out, out
    assert "nan" not in res.stdout + res.stderr and "saved 0" not in out
    after = sorted(p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "lock" not in p.name)
    assert after == before
