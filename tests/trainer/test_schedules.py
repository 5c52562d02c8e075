"""Checkpoint schedules: exact documented steps, spec parsing and errors, the adaptive saver."""

import json
import math

import numpy as np
import pytest

from trainer.schedules import (
    AdaptiveSaver,
    ScheduleSpec,
    combine,
    dense_window,
    every,
    explicit,
    log_spaced,
)


def test_every_includes_zero_and_total():
    assert every(100, 500) == [0, 100, 200, 300, 400, 500]
    assert every(300, 1000) == [0, 300, 600, 900, 1000]
    assert every(7, 0) == [0]


def test_log_spaced_exact():
    assert log_spaced(10, 1000) == [0, 1, 2, 5, 10, 22, 46, 100, 215, 464, 1000]
    assert log_spaced(3, 100, first=10) == [0, 10, 32, 100]
    assert log_spaced(1, 50) == [0, 50]
    steps = log_spaced(50, 100)
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 100 and len(steps) < 51


def test_explicit_window_combine():
    assert explicit([20, 0, 10, 10]) == [0, 10, 20]
    assert explicit([0, 10, 20], total=15) == [0, 10]
    assert dense_window(400, 800, 100) == [400, 500, 600, 700, 800]
    assert dense_window(5, 17, 5) == [5, 10, 15, 17]
    assert combine([0, 10], [5, 10], []) == [0, 5, 10]


def test_spec_parse_steps_and_round_trip():
    spec = ScheduleSpec.parse("every:500+window:400-800:100")
    assert spec.steps(1200) == [0, 400, 500, 600, 700, 800, 1000, 1200]
    assert spec.make_saver() is None
    spec = ScheduleSpec.parse("list:0,10,20+log:3")
    assert spec.steps(100) == [0, 1, 10, 20, 100]
    assert spec.steps(15) == [0, 1, 4, 10, 15]
    spec = ScheduleSpec.parse("every:100 + adaptive:min_gap=5,threshold=0.02")
    assert ScheduleSpec.parse(str(spec)) == spec
    saver = spec.make_saver()
    assert (saver.min_gap, saver.max_gap, saver.threshold) == (5, 1000, 0.02)
    assert ScheduleSpec.parse("adaptive").make_saver() == AdaptiveSaver()
    assert ScheduleSpec.parse("window:400-800:5").steps(600)[-1] == 600


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty checkpoint schedule"),
        ("foo:1", "unknown checkpoint schedule kind 'foo'"),
        ("every:", "has no arguments"),
        ("every:x", "'x' where an integer belongs"),
        ("every:0", "positive integer interval"),
        ("log:0", "positive integer number of points"),
        ("list:1,-2", "non-negative integers"),
        ("window:400:5", "must look like 'window:START-STOP:EVERY'"),
        ("window:800-400:5", "0 <= start <= stop"),
        ("every:10+adaptive+adaptive", "two adaptive parts"),
        ("adaptive:foo=1", "use keys"),
        ("adaptive:min_gap=x", "non-numeric value 'x'"),
        ("adaptive:min_gap=50,max_gap=10", "max_gap must be an integer >= min_gap"),
        ("adaptive:min_gap=2.5", "min_gap must be an integer"),
    ],
)
def test_spec_errors(text, match):
    with pytest.raises(ValueError, match=match):
        ScheduleSpec.parse(text)


def _planted_drop(n=3000, seed=0):
    """Plateau at 4, sigmoid drop to 2 centred at step 1500 (width 30), plateau, small noise."""
    t = np.arange(n)
    clean = 2.0 + 2.0 / (1.0 + np.exp((t - 1500) / 30.0))
    return clean + 0.02 * np.random.default_rng(seed).standard_normal(n)


def _run(saver, losses, start=0):
    return [t for t in range(start, len(losses)) if saver.update(t, losses[t])]


def test_adaptive_saves_densely_during_drop():
    losses = _planted_drop()
    saves = np.array(_run(AdaptiveSaver(min_gap=5, max_gap=200, threshold=0.02), losses))
    density = lambda lo, hi: np.sum((saves >= lo) & (saves < hi)) / (hi - lo)  # noqa: E731
    drop, before, after = density(1400, 1600), density(0, 1300), density(1800, 3000)
    assert drop > 5 * before and drop > 5 * after
    assert np.all(np.diff(saves) >= 5)  # never closer than min_gap
    assert np.all(np.diff(np.concatenate([[0], saves])) <= 200)  # never further than max_gap


def test_adaptive_state_round_trip_is_exact():
    losses = _planted_drop(seed=1)
    full = _run(AdaptiveSaver(min_gap=3, max_gap=100, threshold=0.01, ema=0.8), losses)
    first = AdaptiveSaver(min_gap=3, max_gap=100, threshold=0.01, ema=0.8)
    part1 = [t for t in range(1490) if first.update(t, losses[t])]
    state = json.loads(json.dumps(first.state_dict()))
    assert all(isinstance(v, (int, float)) for v in state.values())
    part2 = _run(AdaptiveSaver.from_state_dict(state), losses, start=1490)
    assert part1 + part2 == full
    with pytest.raises(ValueError, match="unknown keys"):
        AdaptiveSaver.from_state_dict({**state, "bogus": 1})


def test_adaptive_eval_value_and_mark_saved():
    saver = AdaptiveSaver(min_gap=10, max_gap=10_000, threshold=0.1)
    evals = [1.0] * 50 + [0.5] * 50
    saves = [t for t in range(100) if saver.update(t, 3.0, eval_value=evals[t])]
    assert saves == [50]  # flat loss; the eval jump triggers one save
    saver.mark_saved(120)
    assert saver.last_save == 120 and not saver.update(125, 3.0)
    assert math.isclose(saver.ref_eval, 0.5)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(min_gap=0), "min_gap must be a positive integer"),
        (dict(threshold=0.0), "threshold must be positive"),
        (dict(ema=1.0), r"ema must be in \[0, 1\)"),
    ],
)
def test_adaptive_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSaver(**kw)


def test_an_adaptive_rule_alone_still_saves_step_0():
    assert ScheduleSpec.parse("adaptive").steps(100) == [0]
    assert ScheduleSpec.parse("adaptive:min_gap=5").steps(100) == [0]
    assert 0 in ScheduleSpec.parse("every:10+adaptive").steps(100)
