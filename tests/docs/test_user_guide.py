"""Every Python and bash block of docs/user-guide.md, executed on three seed runs, with its answers checked."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
from typer.testing import CliRunner

import store
from tests._seed_runs import SEEDS, seed_runs
from cli.app import app
from tests._paths import ROOT

GUIDE = ROOT / "docs" / "user-guide.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def runs_base(tmp_path_factory):
    return seed_runs(tmp_path_factory)


@pytest.mark.slow
def test_python_recipes_give_the_single_run_answers(runs_base, monkeypatch, capsys):
    monkeypatch.chdir(runs_base)
    ns: dict = {}
    blocks = _blocks("python")
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), ns)
    ds = ns["ds"]
    assert ds.run.values.tolist() == [f"seed{s}" for s in SEEDS] and ds.seed.values.tolist() == list(SEEDS)
    assert "('run', 'step', 'layer', 'head')" in capsys.readouterr().out
    for seed in SEEDS:
        one = store.open_scalars(runs_base / "runs" / f"seed{seed}")
        run_one = store.open_run(runs_base / "runs" / f"seed{seed}", smooth=5)
        peak = one.induction_score.max(["layer", "head"]).values
        over = one.step.values[peak > 0.2]
        first = ns["first_step"].sel(run=f"seed{seed}").values.item()
        assert first == over[0] if over.size else np.isnan(first)
        steepest = one.step.values[1:][np.argmax(np.diff(peak))]
        assert ns["steepest"].sel(run=f"seed{seed}").values.item() == steepest
        np.testing.assert_array_equal(ns["per_seed"].sel(seed=seed).values,
                                      one.induction_score.sel(layer=1).max("head").values)
        assert ns["final"][seed] == one.induction_score.sel(layer=1).max("head").values[-1]
        if over.size:
            assert ns["loss_at_formation"].sel(run=f"seed{seed}").values.item() == \
                run_one.train_loss.sel(step=over[0]).values.item()
        assert ns["table"].loc[f"seed{seed}", "train_loss"] == run_one.train_loss.values[-1]
        np.testing.assert_array_equal(ns["top"].sel(run=f"seed{seed}").values,
                                      one.induction_score.isel(step=-1).max("head").values)


@pytest.mark.slow
def test_shell_recipes_succeed(runs_base, monkeypatch):
    monkeypatch.chdir(runs_base)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    lines = [line for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    assert len(lines) >= 6
    for line in lines:
        args = shlex.split(line)
        assert args[0] == "scalars"
        r = runner.invoke(app, args[1:])
        assert r.exit_code == 0, (line, r.output)
    for name in ("induction.png", "prev.png", "seed0.csv", "seeds.nc", "seed0-patterns.png", "seed0-L1H0.html"):
        assert (runs_base / name).stat().st_size > 0
