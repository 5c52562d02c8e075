"""Presets behave as documented: ICL rises above chance, the adaptive schedule follows the phase change."""

from __future__ import annotations

import numpy as np
import pytest

import store
from trainer.config import resolve_config
from trainer.schedules import ScheduleSpec
from trainer.train import train

ADAPTIVE = "adaptive:min_gap=10,max_gap=400,threshold=0.02"


@pytest.mark.slow
def test_icl_bursty_learns_in_context_above_chance(tmp_path):
    cfg = resolve_config("icl-bursty", None, ["train.steps=600", "train.eval_every=200", "checkpoints.schedule=every:600"])
    train(cfg, tmp_path / "run")
    m = store.open_metrics(tmp_path / "run")
    chance = 1 / cfg["task"]["n_labels"]
    icl = m.eval_icl_accuracy.dropna("step")
    assert float(icl[0]) < 2 * chance
    assert float(icl[-1]) > 3 * chance, f"ICL accuracy {float(icl[-1]):.3f} vs chance {chance:.3f}"


def replay(losses: np.ndarray, spec: str) -> list[int]:
    """The steps the adaptive rule saves for a recorded loss curve, fed as the trainer feeds it."""
    saver = ScheduleSpec.parse(spec).make_saver()
    return [t for t in range(1, len(losses) + 1) if saver.update(t, float(losses[t - 1]))]


@pytest.mark.slow
def test_adaptive_rule_saves_densely_during_the_phase_change(trained_induction_tiny):
    m = store.open_metrics(trained_induction_tiny)
    losses = m.train_loss.dropna("step").values
    saves = np.array(replay(losses, ADAPTIVE))
    repeat = m.eval_repeat_loss.dropna("step")
    # the phase change: where the induction (second-copy) loss falls from near its start to near its end
    start, end = float(repeat[0]), float(repeat[-1])
    falling = repeat.step.values[(repeat.values < start - 0.1 * (start - end)) & (repeat.values > end + 0.1 * (start - end))]
    lo, hi = int(falling.min()), int(falling.max())
    inside = ((saves >= lo) & (saves <= hi)).sum() / (hi - lo + 1)
    outside = ((saves < lo) | (saves > hi)).sum() / (len(losses) - (hi - lo + 1))
    assert inside > 2 * outside, f"saves per step inside the change {inside:.4f}, outside {outside:.4f}"


def test_trainer_saves_what_the_adaptive_rule_says(tmp_path):
    overrides = ["model.d_model=32", "model.n_heads=2", "task.seq_len=24", "task.segment_len_min=4",
                 "task.segment_len_max=8", "train.steps=80", "train.batch_size=8", "train.eval_every=40",
                 "train.eval_size=16", "checkpoints.schedule=list:0+adaptive:min_gap=3,max_gap=30,threshold=0.0003"]
    run = tmp_path / "run"
    train(resolve_config("induction-tiny", None, overrides), run)
    losses = store.open_metrics(run).train_loss.dropna("step").values
    expected = sorted({0, 80, *replay(losses, "adaptive:min_gap=3,max_gap=30,threshold=0.0003")})
    expected = [s for s in expected if s <= 80]
    assert list(store.open_archive(run).steps) == expected
    assert len(expected) > 6 and any(s % 30 for s in expected[1:-1]), expected  # not only the max gap


def test_presets_start_from_the_config_dataclasses():
    """Each preset section has exactly its dataclass's fields, and a field no preset sets has the
    dataclass default (the defaults are written down once)."""
    import dataclasses

    from trainer.model import ModelConfig
    from trainer.presets import PRESETS
    from trainer.sections import CheckpointConfig, SeedConfig, TrainConfig

    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("seeds", SeedConfig),
                         ("checkpoints", CheckpointConfig)):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, preset in PRESETS.items():
            assert set(preset[section]) == set(fields), (name, section)
        for key, default in fields.items():
            values = {p[section][key] for p in PRESETS.values() if not isinstance(p[section][key], list)}
            if len(values) == 1:  # no preset changes it: it is the dataclass's default
                assert values == {default}, (section, key)
