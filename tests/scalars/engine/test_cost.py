"""Per-type cost: XLA FLOP counts, compute time split by them, the --estimate and --all reports."""

import hashlib
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from scalars.engine._cost import format_estimate, split_seconds, type_flops

HEAVY, LIGHT = "cost_test_heavy", "cost_test_light"


@pytest.fixture
def planted_types():
    """Two weights-only types whose FLOPs differ by a known factor: 64 chained 128x128 matmuls
    (64 * 2 * 128^3 FLOPs) against one sum."""

    @scalars.register(HEAVY, dims=(), probe=None, description="many matmuls")
    def heavy(model, probe, clean, ctx):
        m = jnp.ones((128, 128)) * model.blocks[0].attn.W_Q.mean()
        for _ in range(64):
            m = m @ m / 128.0
        return m.sum()

    @scalars.register(LIGHT, dims=(), probe=None, description="one sum")
    def light(model, probe, clean, ctx):
        return model.blocks[0].attn.W_Q.sum()

    yield
    scalars.registry.unregister(HEAVY)
    scalars.registry.unregister(LIGHT)


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_split_seconds_is_proportional_and_sums_to_the_total():
    parts = split_seconds(10.0, {"a": 3.0, "b": 1.0})
    assert parts == pytest.approx({"a": 7.5, "b": 2.5})
    assert split_seconds(4.0, {"a": 0.0, "b": 0.0}) == pytest.approx({"a": 2.0, "b": 2.0})  # no counts: even
    assert split_seconds(1.0, {}) == {}


def test_type_flops_counts_the_planted_matmuls(planted_types, tiny_run):
    plan = scalars.plan(tiny_run, [HEAVY, LIGHT])[0]
    flops = type_flops(plan, [HEAVY, LIGHT])
    assert flops[HEAVY] >= 64 * 2 * 128 ** 3  # XLA counts every multiply-add of the chain
    assert flops[LIGHT] < flops[HEAVY] / 1000


def test_report_splits_time_by_flops(planted_types, tiny_run, copy_run):
    run = copy_run(tiny_run)
    assert scalars.compute(copy_run(tiny_run, "untimed"), [HEAVY, LIGHT])[0].type_seconds == {}  # opt-in
    rep = scalars.compute(run, [HEAVY, LIGHT], type_timing=True)[0]
    assert set(rep.type_seconds) == {HEAVY, LIGHT}
    assert rep.type_seconds[HEAVY] > 100 * rep.type_seconds[LIGHT]
    assert sum(rep.type_seconds.values()) <= rep.seconds
    assert scalars.compute(run, [HEAVY, LIGHT], type_timing=True)[0].type_seconds == {}  # nothing left


@pytest.mark.slow
def test_estimate_measures_without_storing_and_all_prints_an_estimate_first(planted_types, tiny_run, copy_run):
    run = copy_run(tiny_run)
    scalars.compute(run, ["induction_score"])
    before = _tree_digest(run)
    result = CliRunner().invoke(app, ["compute", str(run), "--type", HEAVY, "--type", LIGHT,
                                      "--type", "induction_score", "--estimate"])
    assert result.exit_code == 0, result.output
    assert _tree_digest(run) == before  # an estimate stores nothing
    n_steps = len(store.open_scalars(run).step)
    text = " ".join(result.output.split())
    assert f"2 type(s) x {n_steps} checkpoint(s) = {2 * n_steps} cells" in text  # induction_score is stored
    assert f"costliest by FLOPs: {HEAVY} 100%, {LIGHT} 0%" in text
    assert "per checkpoint -> about" in text

    result = CliRunner().invoke(app, ["compute", str(run), "--all", "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.index("costliest by FLOPs") < text.index("cells computed")
    assert "per type (compute time split by XLA FLOP share):" in text
    assert HEAVY in text.split("per type")[1]


def test_estimate_lines_name_size_and_time():
    est = scalars.engine.CostEstimate("r", cells=12, checkpoints=4, flops={"a": 3e9, "b": 1e9},
                               compile_seconds=2.0, seconds_per_checkpoint=0.5)
    lines = format_estimate(est)
    assert lines[0] == "r: 2 type(s) x 4 checkpoint(s) = 12 cells; 4 GFLOP per checkpoint if each type ran alone " \
                       "(XLA's count)"
    assert lines[1] == "  costliest by FLOPs: a 75%, b 25%"
    assert est.seconds == pytest.approx(4.0)
    assert "about 4s in all" in lines[2]
    assert np.isfinite(est.seconds)
