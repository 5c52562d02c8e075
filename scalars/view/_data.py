"""The stored `attention_pattern` of a run, checked and labelled, ready to draw.

`load_pattern_view` validates the request (step, layer, head) before anything is computed or
read, computes the checkpoints whose pattern is missing (one clean forward each; stored in the
run like every other type) unless `compute_missing=False`, then reads every computed checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

TYPE = "attention_pattern"

__all__ = ["PatternView", "load_pattern_view", "TYPE"]


@dataclasses.dataclass(frozen=True)
class PatternView:
    """Mean attention patterns of one run at its computed checkpoints, with axis labels.

    `values` has shape (step, layer, head, query_pos, key_pos); `labels` name the positions
    (the probe's tokens, or roles for classifier and regression probes) and `label_note` says
    where they come from. `computed` counts the checkpoints computed by this load.
    """

    run_dir: str
    steps: np.ndarray
    values: np.ndarray
    labels: list[str]
    label_note: str
    probe: str
    computed: int = 0

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[2])

    def step_index(self, step: int) -> int:
        """Index of `step` in `steps`; ValueError naming the nearest stored steps."""
        hits = np.flatnonzero(self.steps == step)
        if not hits.size:
            raise ValueError(_missing_step(step, self.steps, self.run_dir))
        return int(hits[0])

    def at(self, step: int) -> np.ndarray:
        """(layer, head, query_pos, key_pos) at a stored step."""
        return self.values[self.step_index(step)]


def _missing_step(step: int, steps: np.ndarray, run_dir: str, what: str = f"stored checkpoint of {TYPE}") -> str:
    steps = np.asarray(steps, np.int64)
    near = steps[np.argsort(np.abs(steps - step), kind="stable")[:3]]
    listed = ", ".join(str(int(s)) for s in sorted(near))
    return f"step {step} is not a {what} in '{run_dir}'; nearest stored steps: {listed}"


def _check_range(what: str, value: int | None, n: int) -> None:
    if value is not None and not 0 <= value < n:
        raise ValueError(f"{what} {value} is out of range: this run has {what}s 0-{n - 1}")


def _no_variable(run_dir: str) -> KeyError:
    return KeyError(f"run '{run_dir}' stores no {TYPE}; compute it with `scalars compute {run_dir} --type {TYPE}`")


def load_pattern_view(
    run_dir: str | Path,
    *,
    step: int | None = None,
    layer: int | None = None,
    head: int | None = None,
    compute_missing: bool = True,
    log: Callable[[str], None] | None = None,
) -> PatternView:
    """Read (computing first, unless `compute_missing=False`) the run's `attention_pattern`.

    `step`, `layer` and `head`, when given, are checked first (a step must be a checkpoint of the
    run, or a computed one with `compute_missing=False`), so a bad request costs nothing.
    """
    import store
    from ..engine import run_plan
    from ..engine._plan import plan_compute
    from trainer.model import ModelConfig

    run_dir = str(run_dir)
    info = store.read_run_json(run_dir)
    if "model" not in info:
        raise ValueError(f"run '{run_dir}' has no model config in run.json; it was not written by this package")
    config = ModelConfig.from_dict(info["model"])
    _check_range("layer", layer, config.n_layers)
    _check_range("head", head, config.n_heads)
    plan, computed = None, 0
    try:
        plan = plan_compute(run_dir, [TYPE])  # writes nothing: the missing checkpoints and the probe
    except ValueError:
        if compute_missing:
            raise
    if compute_missing and plan is not None:
        if step is not None and step not in set(plan.selected.tolist()):
            raise ValueError(_missing_step(step, plan.selected, run_dir, what="checkpoint"))
        if plan.n_cells:
            if log:
                log(f"computing {TYPE} for {plan.n_cells} checkpoint(s) of {run_dir} (stored in the run)")
            report = run_plan(plan)
            if report.failed_steps:
                first = sorted(report.failed_steps.items())[0]
                raise ValueError(f"computing {TYPE} failed at step {first[0]}: {first[1]}")
            computed = int(plan.n_cells)
    try:
        ds = store.open_scalars(run_dir, with_masks=True)
    except FileNotFoundError:
        raise _no_variable(run_dir) from None
    if TYPE not in ds.data_vars:
        raise _no_variable(run_dir)
    mask = np.asarray(ds[f"computed__{TYPE}"].values, bool)
    steps = np.asarray(ds.step.values, np.int64)[mask]
    if not len(steps):
        raise _no_variable(run_dir)
    if step is not None and step not in set(steps.tolist()):
        raise ValueError(_missing_step(step, steps, run_dir))
    da = ds[TYPE]
    values = np.asarray(da.isel(step=np.flatnonzero(mask)).transpose(
        "step", "layer", "head", "query_pos", "key_pos").values, np.float32)
    labels, note = _labels(da.attrs, None if plan is None else plan.probes[TYPE], values.shape[-1])
    return PatternView(run_dir, steps, values, labels, note, str(da.attrs.get("probe") or ""), computed)


def _labels(attrs: dict, probe, n: int) -> tuple[list[str], str]:
    """Token labels when the probe at hand is the one the stored values were computed on."""
    from ._labels import axis_labels, position_labels

    if probe is not None and probe.content_hash == attrs.get("probe_hash") and probe.seq_len == n:
        return axis_labels(probe)
    return position_labels(n), f"positions (probe '{attrs.get('probe', '?')}' not rebuilt here)"
