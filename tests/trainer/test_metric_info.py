"""Logged metrics carry units and a description as attrs."""

from __future__ import annotations

import jax
import pytest

import scalars
import store
from trainer.metric_info import METRIC_PREFIXES, describe_metric


def test_every_metric_of_a_trained_run_has_units_and_a_description(tiny_run):
    m = store.open_metrics(tiny_run)
    assert set(m.data_vars) >= {"train_loss", "eval_loss", "eval_repeat_loss"}
    for name in m.data_vars:
        attrs = m[name].attrs
        assert attrs.get("units") and attrs.get("description"), name
    assert m.train_loss.attrs["units"] == "nats" and "training batch" in m.train_loss.attrs["description"]


def test_metric_names_by_task():
    assert describe_metric("eval_icl_accuracy") == {"units": "fraction correct",
                                                    "description": "query accuracy on the icl evaluation set"}
    assert describe_metric("icl_accuracy") == describe_metric("eval_icl_accuracy")  # a run from before the prefix
    assert describe_metric("eval_test_loss_pos03")["description"] == \
        "loss of the prediction after 03 in-context examples on the test set"
    assert describe_metric("eval_train_tasks_delta_ridge")["units"] == "squared error"
    assert describe_metric("something_else") == {}


@pytest.mark.slow
@pytest.mark.parametrize("preset,overrides", [
    ("induction-tiny", []),
    ("icl-bursty", []),
    ("icl-regression", ["task.n_tasks=4", "task.context_len=4"]),
])
def test_no_metric_a_task_logs_is_named_like_a_scalar_type(preset, overrides):
    """Every eval metric of every task starts with a prefix that the registry keeps from types."""
    from trainer.config import resolve_config
    from trainer.model import build_model
    from trainer.tasks import build_task

    task = build_task(resolve_config(preset, None, overrides))
    model = build_model(task.model_config)
    names = set()
    for set_name, batch in task.eval_sets(0, 2).items():
        example = jax.tree_util.tree_map(lambda x: x[0], batch)
        names |= set(task.eval_metrics(set_name, model(task.model_input(example)), example))
    assert names and all(n.startswith(METRIC_PREFIXES) for n in names), sorted(names)
    assert not names & {t.name for t in scalars.list_types()}


def test_type_names_may_not_take_a_metric_prefix():
    with pytest.raises(ValueError, match="kept for training metrics"):
        scalars.register("eval_icl_accuracy", dims=(), probe=None, description="x")(lambda *a: 0.0)
    assert "eval_icl_accuracy" not in {t.name for t in scalars.list_types()}
