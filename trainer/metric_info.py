"""Units and a description for every metric the trainer logs, by the shape of its name.

Every metric name starts with `train_` or `eval_` (prefixes no derived-scalar type may take, so
that a metric and a scalar never share a name): `train_loss` and, per evaluation set, `eval_*`
(token tasks), `eval_<set>_loss` and `eval_<set>_accuracy` (classifiers), `eval_<set>_loss_posKK`
and baseline distances (regression). Runs written before the prefix (`<set>_accuracy`) are
described too. The table is matched top to bottom, first match wins; unknown names get no attrs.
"""

from __future__ import annotations

import re

METRIC_PREFIXES = ("train_", "eval_")  # every logged metric name starts with one; no scalar type may

_RULES: tuple[tuple[str, str, str], ...] = (  # (name pattern, units, description; {set} = the eval set)
    (r"train_loss", "nats", "mean loss of the training batch at this step, before its update"),
    (r"eval_repeat_loss", "nats", "mean next-token loss on the second copy of repeated random tokens"),
    (r"eval_first_copy_loss", "nats", "mean next-token loss on the first copy of repeated random tokens"),
    (r"eval_loss", "nats", "mean next-token loss on repeated random tokens"),
    (r"eval_accuracy", "fraction correct", "next-token accuracy on repeated random tokens"),
    (r"(?:eval_)?(?P<set>.+)_loss_pos(?P<k>\d+)", "squared error", "loss of the prediction after {k} in-context examples "
                                                         "on the {set} set"),
    (r"(?:eval_)?(?P<set>.+)_delta_(?P<base>ridge|dmmse)", "squared error",
     "mean squared distance of the predictions to the {base} baseline's on the {set} set"),
    (r"(?:eval_)?(?P<set>.+)_(?P<base>ridge|dmmse)_loss", "squared error", "loss of the {base} baseline on the {set} set"),
    (r"(?:eval_)?(?P<set>.+)_accuracy", "fraction correct", "query accuracy on the {set} evaluation set"),
    (r"(?:eval_)?(?P<set>.+)_loss", "nats (squared error for regression)", "mean query loss on the {set} evaluation set"),
)


def describe_metric(name: str) -> dict[str, str]:
    """{"units": ..., "description": ...} for a logged metric name ({} for names not in the table)."""
    for pattern, units, text in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return {"units": units, "description": text.format(**match.groupdict())}
    return {}
