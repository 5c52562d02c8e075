"""One checkpoint as a batched Equinox model: `load_model(run, step)` and its thin wrapper.

The archive's `Transformer` works on one sequence (the engine vmaps it); `CheckpointModel` vmaps
it over a batch so `model(tokens)` with tokens (batch, T) gives logits (batch, T, vocab), the way
a TransformerLens `HookedTransformer` is called. It is a pure Equinox module (weights are its
only leaves), so it passes through `jax.jit`, `eqx.filter_jit`, `jax.grad` and `eqx.tree_at`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import store
from trainer.model import ModelConfig, Transformer, params_from_named

from ..engine._program import model_template
from ..engine._plan import load_run_model_config

__all__ = ["CheckpointModel", "load_model", "resolve_step", "batched_aux"]

Inputs = Any  # tokens (batch, T) int, {"examples", "labels"} or {"xs", "ys"} with a leading batch axis
STEP_WORDS = {"last": -1, "first": 0}


class CheckpointModel(eqx.Module):
    """A `Transformer` called on batches: `model(inputs)` -> logits (batch, T, n_outputs).

    `inputs` is what one sequence takes with a leading batch axis: tokens (batch, T) for token
    models, {"examples": (batch, P, d_in), "labels": (batch, P)} for classifiers, {"xs", "ys"}
    for regression (a probe's `.inputs`). `cache` and `cache_mask` are the per-sequence
    intervention dicts of `call_with_all_aux`, their leaves batched like `inputs`.
    """

    model: Transformer

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    cfg = config  # the TransformerLens spelling

    def __call__(self, inputs: Inputs, *, cache: dict | None = None, cache_mask: dict | None = None) -> jax.Array:
        return self.batched_aux(inputs, cache=cache, cache_mask=cache_mask)["logits"]

    def batched_aux(self, inputs: Inputs, *, cache: dict | None = None, cache_mask: dict | None = None) -> dict:
        """Every activation of a batch: `call_with_all_aux` vmapped (each leaf gains a leading batch axis)."""
        return jax.vmap(lambda x, c, m: self.model.call_with_all_aux(x, cache=c, cache_mask=m))(inputs, cache, cache_mask)

    def call_with_all_aux(self, x: Inputs, *, cache: dict | None = None, cache_mask: dict | None = None,
                          key: Any = None) -> dict:
        """One sequence's activations (no batch axis): the archive model's own `call_with_all_aux`."""
        return self.model.call_with_all_aux(x, cache=cache, cache_mask=cache_mask, key=key)

    def forward_from(self, layer: int, resid: jax.Array, *, cache: dict | None = None,
                     cache_mask: dict | None = None) -> dict:
        """One sequence re-run from block `layer`'s resid_pre `resid` (T, d): `Transformer.forward_from`."""
        return self.model.forward_from(layer, resid, cache=cache, cache_mask=cache_mask)


@eqx.filter_jit
def batched_aux(model: CheckpointModel, inputs: Inputs) -> dict:
    """`model.batched_aux(inputs)`, compiled once per model structure and input shape."""
    return model.batched_aux(inputs)


def resolve_step(committed: np.ndarray, step: int | str, run: str | Path) -> int:
    """The committed step that `step` names (an int, a digit string, "first" or "last")."""
    committed = np.asarray(committed, np.int64)
    if committed.size == 0:
        raise ValueError(f"run '{run}' has no committed checkpoints yet; train it first or wait for a save")
    if isinstance(step, str) and step.strip() in STEP_WORDS:
        return int(committed[STEP_WORDS[step.strip()]])
    try:
        value = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"step {step!r} is not a step number, 'first' or 'last'") from None
    if value not in set(committed.tolist()):
        raise ValueError(f"step {value} is not a stored checkpoint of run '{run}'; {_nearest(committed, value)}")
    return value


def _nearest(committed: np.ndarray, step: int) -> str:
    """The stored steps just below and just above `step`, in words."""
    i = int(np.searchsorted(committed, step))
    near = committed[max(0, i - 1):i + 1].tolist()
    return (f"the nearest stored step is {near[0]}" if len(near) == 1
            else f"the nearest stored steps are {near[0]} and {near[1]}")


def load_model(run: str | Path, step: int | str = "last") -> CheckpointModel:
    """The model of `run` at checkpoint `step` (an int, "first" or "last"), ready for batches.

    Works for any run directory (trained, swept or imported); a missing step names the nearest
    stored ones, a directory that is not a run says so.
    """
    _, config = load_run_model_config(run)
    reader = store.open_archive(run)
    at = resolve_step(reader.steps, step, run)
    param_shapes, static = model_template(config)
    params = params_from_named(param_shapes, reader.load(at))
    return CheckpointModel(eqx.combine(jax.tree_util.tree_map(jnp.asarray, params), static))
