"""Parity with the icl-dynamics code itself: every paper analysis this project computes, against the values
the public icl-dynamics code computes (its own forward and `opto` interventions) on the fixture runs over the
paper's full 78,400-sequence probe, saved by tests/fixtures/icl-dynamics/parity/make_reference.py."""

import json

import numpy as np
import pytest

import scalars
import store
from trainer.interop.icl_dynamics import import_icl_dynamics
from tests._paths import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "icl-dynamics"
REFERENCE = FIXTURES / "parity" / "reference.npz"
EXEMPLAR0 = FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy"
TYPES = ["loss", "accuracy", "attention_pattern", "induction_strength", "prev_token_score",
         "prev_token_score_corrected", "ablated_loss", "ablated_accuracy", "ablated_loss_pattern_preserving",
         "ablated_loss_value_preserving", "layer_removal_loss", "prev_token_clamp_loss", "induction_clamp_loss"]
TOLERANCE = 1e-6  # docs/icl-dynamics.md records the worst difference


def reference(run: str) -> dict[int, dict[str, np.ndarray]]:
    with np.load(REFERENCE) as f:
        out: dict[int, dict[str, np.ndarray]] = {}
        for key in f.files:
            if key.startswith(run + "/"):
                _, step, name = key.split("/")
                out.setdefault(int(step), {})[name] = f[key]
    return out


def worst_differences(tmp_path, run: str, steps=None) -> dict[str, tuple[float, int]]:
    """Import ``run``, compute every parity type on the full paper probe, and return the largest
    |ours - icl-dynamics| of each type with the step where it occurs."""
    out = tmp_path / run
    import_icl_dynamics([FIXTURES / run], out, exemplars=EXEMPLAR0)
    want = reference(run)
    steps = sorted(want) if steps is None else steps
    assert steps and set(steps) <= set(want)
    report = scalars.compute(out, types=TYPES, steps=",".join(map(str, steps)), probe="icl_dynamics")[0]
    assert not report.failed_steps
    ds = store.open_scalars(out)
    worst: dict[str, tuple[float, int]] = {}
    for step in steps:
        for name in TYPES:
            got = ds[name].sel(step=step).values
            assert got.shape == want[step][name].shape, name
            err = float(np.abs(got - want[step][name]).max())
            if err >= worst.get(name, (-1.0, 0))[0]:
                worst[name] = (err, step)
    return worst


def test_the_reference_was_made_by_the_icl_dynamics_code_on_the_full_probe():
    with np.load(REFERENCE) as f:
        meta = json.loads(str(f["__meta__"]))
        assert meta["code"] == "aadityasingh/icl-dynamics 47eba1d"
        assert f["omniglot50_rl5_synthetic/100000/attention_pattern"].shape == (2, 8, 5, 5)
        # the trained main run is an induction circuit: the parity is not between two near-constant models
        assert f["omniglot50_rl5_synthetic/100000/accuracy"] > 0.99
        assert f["omniglot50_rl5_synthetic/100000/induction_strength"].max() > 0.5


@pytest.mark.slow
@pytest.mark.big_memory
def test_every_paper_analysis_equals_the_icl_dynamics_code_at_the_trained_mlp_checkpoint(tmp_path):
    """The last checkpoint of the run with MLP blocks, full probe (78,400 sequences)."""
    worst = worst_differences(tmp_path, "omniglot50_rl5_synthetic_mlp", steps=[60000])
    bad = {k: v for k, v in worst.items() if not v[0] <= TOLERANCE}
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.big_memory
@pytest.mark.parametrize("run", ["omniglot50_rl5_synthetic", "omniglot50_rl5_synthetic_mlp"])
def test_every_paper_analysis_equals_the_icl_dynamics_code_at_every_checkpoint(tmp_path, run):
    """Every checkpoint of both fixture runs, full probe: the figure docs/icl-dynamics.md records."""
    worst = worst_differences(tmp_path, run)
    for name, (err, step) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
        print(f"{run} {name:34s} {err:.2e} (step {step})")
    bad = {k: v for k, v in worst.items() if not v[0] <= TOLERANCE}
    assert not bad, bad
