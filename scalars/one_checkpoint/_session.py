"""What `scalars open RUN --step N` puts in its IPython session, and the banner that lists it.

The default probe is the one the engine measures a type with `probe="default"` on (repeated
tokens for token runs, the run's evaluation set for classifier and regression runs), so the
session's numbers line up with the stored scalars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import store

from ..engine._plan import load_run_model_config
from ..engine._run_probes import build_run_probe
from ._cache import run_with_cache
from ._edits import ablate_head, ablate_neuron, patch_head, patch_resid
from ._model import load_model, resolve_step

__all__ = ["session_namespace", "banner"]

# name -> one line for the banner; the order is the banner's
DESCRIPTIONS = {
    "run": "the run directory (Path)",
    "step": "the checkpoint step loaded",
    "model": "the model at that step: model(inputs) -> logits (batch, T, n_outputs)",
    "probe": "the run's default probe; probe.inputs is a batch for model(...)",
    "logits": "model(probe.inputs)",
    "cache": "activations of probe.inputs by TransformerLens name: cache['blocks.0.attn.hook_pattern']",
    "run_with_cache": "run_with_cache(model, inputs) -> (logits, cache)",
    "ablate_head": "ablate_head(model, inputs, layer, head, kind='zero'|'mean') -> logits",
    "patch_head": "patch_head(model, clean, corrupt, layer, head, position=None) -> logits",
    "ablate_neuron": "ablate_neuron(model, inputs, layer, neuron) -> logits",
    "patch_resid": "patch_resid(model, clean, corrupt, layer, position) -> logits",
    "load_model": "load_model(run, step) -> another checkpoint's model",
    "scalars": "the scalars package",
    "store": "the store package (store.open_scalars(run) for the stored scalars)",
    "jnp": "jax.numpy",
    "np": "numpy",
}


def session_namespace(run: str | Path, step: int | str = "last") -> dict[str, Any]:
    """The names `scalars open` starts with: the run, the step, its model, default probe, a cache of
    the probe and the intervention helpers (see `DESCRIPTIONS`)."""
    import jax.numpy as jnp
    import numpy as np

    import scalars

    info, config = load_run_model_config(run)
    at = resolve_step(store.open_archive(run).steps, step, run)
    model = load_model(run, at)
    probe = build_run_probe("default", run, info, config)
    logits, cache = run_with_cache(model, probe.inputs)
    ns = {"run": Path(run), "step": at, "model": model, "probe": probe, "logits": logits, "cache": cache,
          "run_with_cache": run_with_cache, "ablate_head": ablate_head, "patch_head": patch_head,
          "ablate_neuron": ablate_neuron, "patch_resid": patch_resid, "load_model": load_model,
          "scalars": scalars, "store": store, "jnp": jnp, "np": np}
    return ns


def banner(ns: dict[str, Any]) -> str:
    """A few lines naming the checkpoint and every name in the session."""
    cfg = ns["model"].config
    head = (f"{ns['run']} at step {ns['step']}: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, "
            f"{'attention-only' if cfg.attn_only else 'MLP'}, {cfg.head} head; probe '{ns['probe'].name}' "
            f"({ns['probe'].batch_size} sequences of {ns['probe'].seq_len} positions)")
    width = max(map(len, DESCRIPTIONS))
    return "\n".join([head, *(f"  {name:<{width}}  {DESCRIPTIONS[name]}" for name in ns if name in DESCRIPTIONS)])
