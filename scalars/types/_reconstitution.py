"""Reconstituted attention: a head's pattern recomputed with its query and key sides read from
chosen residual streams, then read out by a pattern score.

- `reconstituted_pattern_score` (layer, head, src_layer, src_head): an earlier head's output
  removed from the query side, the key side or both (option `remove_from`) of (layer, head).
- `mixed_stream_pattern_score` (layer, head), on a paired probe: the query side from the clean
  or the corrupted run's residual stream, the key side likewise (options `query`, `key`).
- `reconstituted_neuron_post` (layer, neuron, src_layer, src_head): each MLP neuron's mean
  post-activation recomputed from its cached input stream minus one head's output (the change
  from the clean value, or the value itself: option `readout`).

Scores (option `score`): `prev_token`, `bos` (any probe), `induction`, `duplicate` (a
repeated-token probe). A plugin passes its own score function to `ctx.reconstituted_scores`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..interventions import _ablation as iv
from ._attention import (PROB, duplicate_from_pattern, induction_from_pattern, prev_token_from_pattern,
                               repeat_length)
from ..probes._pairs import as_pair, corrupt_inputs
from ..registry import register

__all__ = ["PATTERN_SCORES", "bos_from_pattern", "pattern_score_fn"]


def bos_from_pattern(A: Float[Array, "H S S"]) -> Float[Array, " H"]:
    """Mean over queries i in [1, S-1] of A[i, 0] (attention parked on the first position)."""
    return A[:, 1:, 0].mean(-1)


# score name -> (needs the repeat length T, fn(A, T) -> (H,))
PATTERN_SCORES: dict[str, tuple[bool, Callable[..., Array]]] = {
    "prev_token": (False, lambda A, T: prev_token_from_pattern(A)),
    "bos": (False, lambda A, T: bos_from_pattern(A)),
    "induction": (True, lambda A, T: induction_from_pattern(A, T)),
    "duplicate": (True, lambda A, T: duplicate_from_pattern(A, T)),
}
REMOVE_FROM = {"query": "q", "key": "k", "both": "qk"}
STREAMS = ("clean", "corrupt")


def pattern_score_fn(score: str, probe, type_name: str) -> Callable[[Array], Array]:
    """The (H, S, S) -> (H,) readout `score` on `probe` (repeat length checked where it needs one)."""
    needs_T, fn = PATTERN_SCORES[score]
    T = repeat_length(probe, f"{type_name} (score={score})") if needs_T else None
    return functools.partial(fn, T=T)


def _check(options: Mapping[str, Any], probe, *, sides: Mapping[str, tuple[str, ...]]) -> None:
    if options["score"] not in PATTERN_SCORES:
        raise ValueError(f"option score must be one of {', '.join(PATTERN_SCORES)}, got {options['score']!r}")
    for name, allowed in sides.items():
        if options[name] not in allowed:
            raise ValueError(f"option {name} must be one of {', '.join(allowed)}, got {options[name]!r}")


@register("reconstituted_pattern_score", dims=("layer", "head", "src_layer", "src_head"), units=PROB,
          options={"score": "prev_token", "remove_from": "query"},
          validate=functools.partial(_check, sides={"remove_from": tuple(REMOVE_FROM)}),
          description="pattern score (option score: prev_token, bos, induction, duplicate) of (layer, head) with its "
                      "pattern recomputed from the cached resid_pre minus src head's output on the query side, the key "
                      "side or both (option remove_from), LayerNorm recomputed; NaN where src_layer >= layer")
def reconstituted_pattern_score(model, probe, clean, ctx):
    opts = ctx.options
    score = pattern_score_fn(opts["score"], probe, "reconstituted_pattern_score")
    return ctx.reconstituted_scores(REMOVE_FROM[opts["remove_from"]], score)


@register("mixed_stream_pattern_score", dims=("layer", "head"), probe="default_pair", units=PROB,
          options={"score": "prev_token", "query": "corrupt", "key": "clean"},
          validate=functools.partial(_check, sides={"query": STREAMS, "key": STREAMS}),
          description="pattern score (option score) of every head with its query side from the clean or corrupted "
                      "run's residual stream (option query) and its key side likewise (option key), on a paired "
                      "probe; repeat length for induction/duplicate from the clean tokens")
def mixed_stream_pattern_score(model, probe, clean, ctx):
    opts = ctx.options
    pair = ctx.memo(("pair",), lambda: as_pair(ctx.probe, ctx.config, "mixed_stream_pattern_score"))
    corrupt = ctx.memo(("pair_corrupt",), lambda: jax.vmap(ctx.model.call_with_all_aux)(corrupt_inputs(pair)))
    score = pattern_score_fn(opts["score"], probe, "mixed_stream_pattern_score")
    return iv.mixed_stream_scores(model, {"clean": clean, "corrupt": corrupt}, opts["query"], opts["key"], score)


def reconstituted_posts(model, clean: dict, readout: str, head_batching: str = "map"
                        ) -> Float[Array, "layer neuron src_layer src_head"]:
    """Mean over sequences and positions of every MLP neuron's post-activation with one head's
    output removed from the MLP's input stream (its LayerNorm and the MLP recomputed by the model's
    own modules); `readout` "change" subtracts the clean mean. NaN where the head does not feed the
    MLP (src_layer > layer; src_layer == layer with a parallel residual)."""
    outs = clean["layer_outputs"]
    n_layers, n_heads = len(outs), outs[0]["attn_output"]["z"].shape[1]
    rows = []
    for layer, (block, out) in enumerate(zip(model.blocks, outs)):
        x = block.mlp_input(out["resid_pre"], out["resid_mid"])  # (B, T, d)
        base = out["mlp_output"]["post"].mean((0, 1))
        n_neurons = base.shape[0]
        table = jnp.full((n_neurons, n_layers, n_heads), jnp.nan, jnp.float32)
        for src in range(layer + (0 if block.parallel else 1)):
            result = outs[src]["attn_output"]["result"]  # (B, H, T, d)

            def one(g, block=block, x=x, result=result):
                normed = jax.vmap(block.ln2)(x - result[:, g])
                post = jax.vmap(lambda n: block.mlp.call_with_all_aux(n)["post"])(normed)
                return post.mean((0, 1))

            values = iv.map_heads(one, n_heads, head_batching)  # (src_head, neuron)
            table = table.at[:, src, :].set((values - base[None, :] if readout == "change" else values).T)
        rows.append(table)
    return jnp.stack(rows)


def _check_readout(options: Mapping[str, Any]) -> None:
    if options["readout"] not in ("change", "value"):
        raise ValueError(f"option readout must be change or value, got {options['readout']!r}")


@register("reconstituted_neuron_post", dims=("layer", "neuron", "src_layer", "src_head"), units="activation",
          options={"readout": "change"},
          validate=lambda options, probe: _check_readout(options),
          description="mean over probe sequences and positions of MLP neuron n's post-activation recomputed from "
                      "its input stream minus src head's output (LayerNorm and MLP recomputed): the change from the "
                      "clean mean (option readout=change) or the value; NaN where src does not feed the MLP; MLP "
                      "models only")
def reconstituted_neuron_post(model, probe, clean, ctx):
    return reconstituted_posts(model, clean, ctx.options["readout"], ctx.head_batching)
