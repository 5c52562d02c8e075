"""Progress measures of "What needs to go right for an induction head?": query loss under planted patterns.

Both clamp one head's attention pattern with a `cache`/`cache_mask` intervention and re-run
the model from that layer's clean `resid_pre` (`forward_from`); the value is the probe's
query loss (classifier probes).

- `prev_token_clamp_loss[l, h]`: head (l, h)'s whole pattern set to the previous-token
  pattern (row i attends to i-1; row 0 to itself); every other head as computed.
- `induction_clamp_loss[l, h]`: the query row of head (l, h) set to the induction pattern
  (all attention on the label token after the context exemplar that matches the query) and
  every other head of layer l removed (z = 0); other rows and layers as computed.

The paper's measures are `prev_token_clamp_loss.sel(layer=0)` (a layer-0 head made a
previous-token head: is the rest of the circuit ready to use it?) and
`induction_clamp_loss.sel(layer=1)` (a layer-1 head given a perfect match: does its copy (OV)
path produce the label?). The matching context items of a sequence are `correct_index` (the
paper's probe: item ci, label token 2*ci+1), else those of the query's class (`classes`
array), else those whose label equals the target; attention is split evenly between them,
and a sequence without one keeps its computed query row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..probes._input_kinds import CLASSIFIER
from ..interventions._ablation import map_heads, probe_metrics
from ..registry import register

__all__ = ["previous_token_pattern", "matching_items", "induction_strengths", "induction_query_weights",
           "clamped_query_loss", "prev_token_cache", "induction_cache", "clamp_losses"]

HEAD_DIMS = ("layer", "head")


def previous_token_pattern(T: int) -> Float[Array, "T T"]:
    """Row i attends to position i-1 with weight 1 (row 0 to itself)."""
    i = jnp.arange(T)
    return jax.nn.one_hot(jnp.maximum(i - 1, 0), T, dtype=jnp.float32)


def matching_items(probe) -> Float[Array, "B ctx"]:
    """1.0 for the context items that match the query: `correct_index`, else the query's class
    (`classes`), else the query's target label; shape (B, P-1)."""
    labels = probe.arrays["labels"]
    P = labels.shape[1]
    if "correct_index" in probe.arrays:
        return jax.nn.one_hot(probe.arrays["correct_index"], P - 1, dtype=jnp.float32)
    key = probe.arrays["classes"] if "classes" in probe.arrays else labels
    return (key[:, :-1] == key[:, -1:]).astype(jnp.float32)


def induction_strengths(patterns: list[Float[Array, "B H T T"]], probe) -> Float[Array, "layer head"]:
    """Mean over sequences of (attention of the query on matching items' label tokens) minus
    |match|/|other| times (its attention on the other items' label tokens); sequences with no
    matching or no other item are left out (NaN if none is left). With one matching and one other
    item (the paper's `A la B lb Q` probe) this is A[q, correct label] - A[q, wrong label]."""
    match = matching_items(probe)
    other = 1.0 - match
    n_match, n_other = match.sum(-1), other.sum(-1)
    valid = ((n_match > 0) & (n_other > 0)).astype(jnp.float32)
    weights = match - other * (n_match / jnp.maximum(n_other, 1.0))[:, None]  # (B, P-1)
    out = []
    for p in patterns:
        per_seq = jnp.einsum("bhi,bi->bh", p[:, :, -1, 1::2], weights)  # label token of item i is 2i+1
        out.append((per_seq * valid[:, None]).sum(0) / valid.sum())
    return jnp.stack(out)


def induction_query_weights(probe) -> tuple[Float[Array, "B T"], Bool[Array, " B"]]:
    """Per sequence, the planted query row (weight on the label tokens of matching items) and whether it has any."""
    B, P = probe.arrays["labels"].shape
    T = 2 * P - 1
    match = matching_items(probe)
    count = match.sum(-1)
    weights = match / jnp.maximum(count, 1.0)[:, None]
    row = jnp.zeros((B, T), jnp.float32).at[:, 1::2].set(weights)  # label token of item i is 2i+1
    return row, count > 0


def clamped_query_loss(model, probe, clean: dict, layer: int, cache_of_head, head_batching: str) -> Float[Array, " head"]:
    """Probe loss with, for each head h of `layer`, that layer's attention cache `cache_of_head(h)`
    (`(cache, mask)`, both batched over sequences) applied; blocks `layer`.. re-run from clean
    (one forward of the remaining layers per head, as a head ablation costs)."""
    resid = clean["layer_outputs"][layer]["resid_pre"]
    n_heads = clean["layer_outputs"][layer]["attn_output"]["pattern"].shape[1]

    def one(h):
        cache, mask = cache_of_head(h)

        def run(r, c, m):
            return model.forward_from(layer, r, cache={"layer_outputs": {layer: {"attn_output": c}}},
                                      cache_mask={"layer_outputs": {layer: {"attn_output": m}}})["logits"]

        return probe_metrics(jax.vmap(run)(resid, cache, mask), probe)[0]

    return map_heads(one, n_heads, head_batching)


def prev_token_cache(clean: dict, layer: int):
    """`cache_of_head(h)` planting the previous-token pattern in head h of `layer` (whole pattern)."""
    B, H, T, _ = clean["layer_outputs"][layer]["attn_output"]["pattern"].shape
    planted = jnp.broadcast_to(previous_token_pattern(T), (B, H, T, T))

    def cache_of_head(h):
        mask = jnp.broadcast_to((jnp.arange(H) == h)[None, :, None, None], (B, H, 1, 1))
        return {"pattern": planted}, {"pattern": mask}

    return cache_of_head


def induction_cache(probe, clean: dict, layer: int):
    """`cache_of_head(h)` planting the induction query row in head h of `layer`, the layer's other heads removed."""
    row, has_match = induction_query_weights(probe)
    attn = clean["layer_outputs"][layer]["attn_output"]
    B, H, T, _ = attn["pattern"].shape
    planted = jnp.zeros((B, H, T, T), jnp.float32).at[:, :, T - 1, :].set(row[:, None, :])
    is_query = (jnp.arange(T) == T - 1)[None, None, :, None]
    zeros = jnp.zeros_like(attn["z"])

    def cache_of_head(h):
        heads = jnp.arange(H)
        pattern_mask = (heads == h)[None, :, None, None] & is_query & has_match[:, None, None, None]
        z_mask = jnp.broadcast_to((heads != h)[None, :, None, None], (B, H, 1, 1))
        return {"pattern": planted, "z": zeros}, {"pattern": pattern_mask, "z": z_mask}

    return cache_of_head


# which pattern each clamp plants: `cache_of_head` builders of layer `layer`, by clamp name
PREV_TOKEN, INDUCTION = "prev_token", "induction"
CLAMPS = {
    PREV_TOKEN: lambda probe, clean, layer: prev_token_cache(clean, layer),
    INDUCTION: induction_cache,
}


def clamp_losses(model, probe, clean: dict, which: str, head_batching: str = "map") -> Float[Array, "layer head"]:
    """`prev_token_clamp_loss` (`which="prev_token"`) or `induction_clamp_loss` (`which` the
    induction clamp) of every head (`CLAMPS`)."""
    if probe.input_kind is not CLASSIFIER:
        raise ValueError(f"the {which} clamp needs a classifier probe (exemplar-label sequences); probe "
                         f"'{probe.name}' holds {probe.kind}")
    clamp = CLAMPS[which]
    out = [clamped_query_loss(model, probe, clean, layer, clamp(probe, clean, layer), head_batching)
           for layer in range(len(clean["layer_outputs"]))]
    return jnp.stack(out)


@register("prev_token_clamp_loss", dims=HEAD_DIMS, requires="classifier", units="nats",
          description="query loss with head (layer, head)'s attention pattern clamped to the previous-token "
                      "pattern (row i on i-1, row 0 on itself), everything else recomputed; the paper's progress "
                      "measure for a layer-0 previous-token head")
def prev_token_clamp_loss(model, probe, clean, ctx):
    return ctx.memo("prev_token_clamp", lambda: clamp_losses(model, probe, clean, PREV_TOKEN, ctx.head_batching))


@register("induction_clamp_loss", dims=HEAD_DIMS, requires="classifier", units="nats",
          description="query loss with the query row of head (layer, head) clamped to the induction pattern "
                      "(all attention on the label after the context exemplar matching the query) and the other "
                      "heads of that layer removed (z = 0); the paper's progress measure for a layer-1 induction head")
def induction_clamp_loss(model, probe, clean, ctx):
    return ctx.memo("induction_clamp", lambda: clamp_losses(model, probe, clean, INDUCTION, ctx.head_batching))
