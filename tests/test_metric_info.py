"""Logged metrics carry units and a description as attrs."""

from __future__ import annotations

import store
from trainer.metric_info import describe_metric


def test_every_metric_of_a_trained_run_has_units_and_a_description(tiny_run):
    m = store.open_metrics(tiny_run)
    assert set(m.data_vars) >= {"train_loss", "eval_loss", "eval_repeat_loss"}
    for name in m.data_vars:
        attrs = m[name].attrs
        assert attrs.get("units") and attrs.get("description"), name
    assert m.train_loss.attrs["units"] == "nats" and "training batch" in m.train_loss.attrs["description"]


def test_metric_names_by_task():
    assert describe_metric("icl_accuracy") == {"units": "fraction correct",
                                               "description": "query accuracy on the icl evaluation set"}
    assert describe_metric("test_loss_pos03")["description"] == \
        "loss of the prediction after 03 in-context examples on the test set"
    assert describe_metric("train_tasks_delta_ridge")["units"] == "squared error"
    assert describe_metric("something_else") == {}
