"""A slow reference for tests: one full forward per intervention, python loops, no jit.

Every ablation is a fresh `call_with_all_aux` of the whole model with a cache, one head at a
time; reconstitution caches the recomputed q or k of the layer in a full forward. The type
functions are the registered ones; only the `ctx` differs from the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..interventions import _ablation as iv
from ..interventions._context import Context
from ..registry import DerivedScalarType, get_type, resolve_options

__all__ = ["naive_compute", "NaiveContext"]


_FIELDS = ("q", "k", "v", "pattern", "z")
# what a removed head's z (B, T, e) becomes, written out in numpy (the engine's: iv.ABLATION_VALUES)
_NAIVE_ABLATIONS = {
    "zero": lambda z: np.zeros_like(z),
    "mean": lambda z: np.broadcast_to(z.mean(axis=(0, 1)), z.shape),
    "mean_per_position": lambda z: np.broadcast_to(z.mean(axis=0), z.shape),
}


@eqx.filter_jit
def _masked_forward(model, inputs, cache, mask):
    return jax.vmap(lambda x, c: model.call_with_all_aux(x, cache=c, cache_mask=mask))(inputs, cache)


def full_forward(model, probe, layer_entries: dict[int, dict] | None = None, *, like: dict | None = None) -> dict:
    """The whole model on the probe batch with the attention entries of `layer_entries`
    (`{layer: {"attn_output": {name: batched array}}}`) replacing computed values.

    Every layer's q, k, v, pattern and z always appear in the cache, switched on or off by a
    scalar mask, so all interventions share one compiled program (`like`: clean activations
    giving the shapes).
    """
    layer_entries = layer_entries or {}
    if like is None:
        like = _masked_forward(model, probe.inputs, None, None)
    cache, mask = [], []
    for layer, out in enumerate(like["layer_outputs"]):
        given = layer_entries.get(layer, {}).get("attn_output", {})
        cache.append({"attn_output": {f: given.get(f, jnp.zeros_like(out["attn_output"][f])) for f in _FIELDS}})
        mask.append({"attn_output": {f: jnp.asarray(f in given) for f in _FIELDS}})
    mask = {"layer_outputs": mask}
    return _masked_forward(model, probe.inputs, {"layer_outputs": cache}, mask)


class NaiveContext(Context):
    """`Context` whose interventions are full forwards in python loops."""

    def _preserved(self, after: int, preserve) -> dict[int, dict]:
        return iv.preserve_cache(self.clean, after, preserve)

    def head_ablation_metrics(self, *, preserve=None, ablation="zero"):
        def compute():
            outs = self.clean["layer_outputs"]
            loss = np.zeros((len(outs), outs[0]["attn_output"]["z"].shape[1]), np.float32)
            acc = np.zeros_like(loss)
            for layer in range(len(outs)):
                z = np.asarray(outs[layer]["attn_output"]["z"])
                for head in range(z.shape[1]):
                    z_abl = z.copy()
                    z_abl[:, head] = _NAIVE_ABLATIONS[ablation](z[:, head])
                    entries = {layer: {"attn_output": {"z": jnp.asarray(z_abl)}}, **self._preserved(layer, preserve)}
                    loss[layer, head], acc[layer, head] = self.metrics(full_forward(self.model, self.probe, entries, like=self.clean)["logits"])
            return jnp.asarray(loss), jnp.asarray(acc)

        return self.memo(("heads", preserve, ablation), compute)

    def layer_removal_metrics(self, *, ablation="zero"):
        def compute():
            outs = self.clean["layer_outputs"]
            loss, acc = np.zeros(len(outs), np.float32), np.zeros(len(outs), np.float32)
            for layer in range(len(outs)):
                z = np.asarray(outs[layer]["attn_output"]["z"])
                z_abl = np.stack([_NAIVE_ABLATIONS[ablation](z[:, h]) for h in range(z.shape[1])], axis=1)
                entries = {layer: {"attn_output": {"z": jnp.asarray(z_abl)}},
                           **self._preserved(layer, "pattern_and_value")}
                loss[layer], acc[layer] = self.metrics(full_forward(self.model, self.probe, entries, like=self.clean)["logits"])
            return jnp.asarray(loss), jnp.asarray(acc)

        return self.memo(("layers", ablation), compute)

    def reconstituted_scores(self, side, score_fn):
        def compute():
            outs = self.clean["layer_outputs"]
            n_layers, n_heads = len(outs), outs[0]["attn_output"]["z"].shape[1]
            full = np.full((n_layers, n_heads, n_layers, n_heads), np.nan, np.float32)
            for layer in range(1, n_layers):
                block = self.model.blocks[layer]
                for src in range(layer):
                    for g in range(n_heads):
                        x = outs[layer]["resid_pre"] - outs[src]["attn_output"]["result"][:, g]
                        proj = jax.vmap(lambda xb: block.attn.project(block.ln1(xb), side))(x)
                        run = full_forward(self.model, self.probe, {layer: {"attn_output": {side: proj}}}, like=self.clean)
                        pattern = run["layer_outputs"][layer]["attn_output"]["pattern"]
                        full[layer, :, src, g] = np.asarray(score_fn(pattern.mean(0)))
            return jnp.asarray(full)

        return self.memo(("reconstituted", side, score_fn), compute)


def naive_compute(
    types: Sequence[DerivedScalarType | str],
    model,
    probe=None,
    *,
    type_probes: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Every type's value for one model, the slow way (reference for tests).

    `probe` / `type_probes` select each type's probe as in `make_compute_fn`.
    """
    from ..engine._program import select_probe  # shared probe resolution

    options = dict(options or {})
    results: dict[str, np.ndarray] = {}
    contexts: dict[str, NaiveContext] = {}
    for dst in (get_type(t) for t in types):
        p = select_probe(dst, model.config, probe, type_probes)
        key = "" if p is None else p.name
        if key not in contexts:
            clean = {} if p is None else full_forward(model, p)
            contexts[key] = NaiveContext(model, p, clean)
        ctx = contexts[key].for_type(resolve_options(dst, options.get(dst.name)))
        results[dst.name] = np.asarray(dst.fn(model, p, ctx.clean, ctx))
    return results
