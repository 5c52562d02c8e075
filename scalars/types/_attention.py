"""Built-in types read off attention patterns of the clean run (and reconstituted patterns).

Positions are 0-indexed with BOS at 0; on a repeated-token probe S = 2T+1 and token i of the
second half (i in [T+1, 2T]) repeats token i-T. `A` is a head's pattern averaged over the B
probe sequences; pattern helpers take `A` of shape (H, S, S) and return (H,).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._icl import induction_strengths
from ..registry import register

__all__ = [
    "prev_token_from_pattern", "duplicate_from_pattern", "induction_from_pattern",
    "prev_token_corrected_from_pattern", "detection_pattern", "repeat_length",
]

PROB = "attention probability"
DETECTIONS = ("previous_token_head", "duplicate_token_head", "induction_head")


def repeat_length(probe, type_name: str) -> int:
    """The probe's repeat length T (metadata), checked against S = 2T+1."""
    T = probe.metadata.get("T")
    if T is None:
        raise ValueError(
            f"type '{type_name}' needs a repeated-token probe (BOS + T tokens + the same T); probe "
            f"'{probe.name}' has no repeat length T in its metadata (use repeated_tokens or from_tokens(..., T=))"
        )
    if probe.seq_len != 2 * T + 1:
        raise ValueError(f"type '{type_name}': probe '{probe.name}' has {probe.seq_len} positions, expected 2T+1 = {2 * T + 1}")
    return int(T)


def _diagonal_mean(A: Float[Array, "H S S"], rows: range, offset: int) -> Float[Array, " H"]:
    """Mean over query rows i of A[:, i, i - offset]."""
    i = jnp.arange(rows.start, rows.stop)
    return A[:, i, i - offset].mean(-1)


def prev_token_from_pattern(A: Float[Array, "H S S"]) -> Float[Array, " H"]:
    """Mean over i in [1, S-1] of A[i, i-1]."""
    return _diagonal_mean(A, range(1, A.shape[-1]), 1)


def duplicate_from_pattern(A: Float[Array, "H S S"], T: int) -> Float[Array, " H"]:
    """Mean over i in [T+1, 2T] of A[i, i-T]."""
    return _diagonal_mean(A, range(T + 1, 2 * T + 1), T)


def induction_from_pattern(A: Float[Array, "H S S"], T: int) -> Float[Array, " H"]:
    """Mean over i in [T+1, 2T] of A[i, i-T+1]."""
    return _diagonal_mean(A, range(T + 1, 2 * T + 1), T - 1)


def prev_token_corrected_from_pattern(A: Float[Array, "H S S"]) -> Float[Array, " H"]:
    """Mean over q in [1, S-1] of a - (1-a)/q with a = A[q, q-1] (0 for uniform attention)."""
    q = jnp.arange(1, A.shape[-1])
    a = A[:, q, q - 1]
    return (a - (1.0 - a) / q[None, :]).mean(-1)


def _per_layer(ctx, fn) -> Float[Array, "layer head"]:
    A = ctx.mean_patterns()
    return jnp.stack([fn(A[layer]) for layer in range(A.shape[0])])


@register("prev_token_score", dims=("layer", "head"), probe="default", units=PROB,
          description="mean over i in [1, 2T] (all positions after BOS) of A[i, i-1]")
def prev_token_score(model, probe, clean, ctx):
    return _per_layer(ctx, prev_token_from_pattern)


@register("duplicate_token_score", dims=("layer", "head"), probe="repeated_tokens", requires="lm", units=PROB,
          description="mean over i in [T+1, 2T] of A[i, i-T] (attention to the earlier copy of the current token)")
def duplicate_token_score(model, probe, clean, ctx):
    T = repeat_length(probe, "duplicate_token_score")
    return _per_layer(ctx, functools.partial(duplicate_from_pattern, T=T))


@register("induction_score", dims=("layer", "head"), probe="repeated_tokens", requires="lm", units=PROB,
          description="mean over i in [T+1, 2T] of A[i, i-T+1] (attention to the token after the earlier copy)")
def induction_score(model, probe, clean, ctx):
    T = repeat_length(probe, "induction_score")
    return _per_layer(ctx, functools.partial(induction_from_pattern, T=T))


@register("prev_token_score_corrected", dims=("layer", "head"), probe="default", units=PROB,
          description="icl-dynamics chance-corrected previous-token score: mean over q >= 1 of a - (1-a)/q, "
                      "a = A[q, q-1] (1 for a perfect previous-token head, 0 for uniform attention)")
def prev_token_score_corrected(model, probe, clean, ctx):
    return _per_layer(ctx, prev_token_corrected_from_pattern)


@register("attention_pattern", dims=("layer", "head", "query_pos", "key_pos"), probe="default", units=PROB,
          description="attention pattern A[query_pos, key_pos] of every head averaged over the probe sequences "
                      "(rows sum to 1; the data of `scalars patterns`)")
def attention_pattern(model, probe, clean, ctx):
    return ctx.mean_patterns()


@register("attention_entropy", dims=("layer", "head"), probe="default", units="nats",
          description="entropy of each query row of the attention pattern, averaged over rows and probe sequences")
def attention_entropy(model, probe, clean, ctx):
    return jnp.stack([(-jax.scipy.special.xlogy(p, p).sum(-1)).mean(axis=(0, 2)) for p in ctx.patterns()])


def detection_pattern(tokens, which: str):
    """TransformerLens detection patterns (S, S) for one token sequence (`which` in DETECTIONS)."""
    S = tokens.shape[-1]
    i, j = jnp.arange(S)[:, None], jnp.arange(S)[None, :]
    if which == "previous_token_head":
        return (j == i - 1).astype(jnp.float32)
    dup = (tokens[:, None] == tokens[None, :]) & (i != j) & (j <= i)
    if which == "duplicate_token_head":
        return dup.astype(jnp.float32)
    if which == "induction_head":  # duplicate pattern shifted one key to the right, column 0 zero
        shifted = jnp.concatenate([jnp.zeros((S, 1), bool), dup[:, :-1]], axis=1)
        return (shifted & (j <= i)).astype(jnp.float32)
    raise ValueError(f"head_detector_score: detection must be one of {', '.join(DETECTIONS)}, got {which!r}")


def _detector_one(pattern, det, *, exclude_bos: bool, exclude_current_token: bool, error_measure: str):
    """One sequence: pattern (H, S, S), detection (S, S) -> (H,), as TransformerLens computes it."""
    S = pattern.shape[-1]
    keep = jnp.ones((S, S), bool)
    if exclude_bos:
        keep = keep.at[:, 0].set(False)
    if exclude_current_token:
        keep = keep & ~jnp.eye(S, dtype=bool)
    if error_measure == "mul":
        p = jnp.where(keep, pattern, 0.0)
        return (p * det[None]).sum((-2, -1)) / p.sum((-2, -1))
    if error_measure == "abs":
        diff = jnp.where(keep, jnp.abs(pattern - det), 0.0)
        return 1.0 - jnp.round(diff.mean((-2, -1)) * S, 3)
    raise ValueError(f"head_detector_score: error_measure must be 'mul' or 'abs', got {error_measure!r}")


@register("head_detector_score", dims=("layer", "head"), probe="repeated_tokens", requires="lm",
          units="fraction of attention",
          options={"detection": "induction_head", "exclude_bos": False, "exclude_current_token": False,
                   "error_measure": "mul"},
          description="TransformerLens detect_head: per sequence, sum(pattern * detection) / sum(pattern) "
                      "('mul'), detection pattern from the tokens (option detection: induction_head, "
                      "previous_token_head, duplicate_token_head), averaged over probe sequences")
def head_detector_score(model, probe, clean, ctx):
    opts = ctx.options
    dets = jax.vmap(lambda t: detection_pattern(t, opts["detection"]))(probe.arrays["tokens"])  # (B, S, S)
    one = functools.partial(_detector_one, exclude_bos=bool(opts["exclude_bos"]),
                            exclude_current_token=bool(opts["exclude_current_token"]),
                            error_measure=opts["error_measure"])
    return jnp.stack([jax.vmap(one)(p, dets).mean(0) for p in ctx.patterns()])


@register("induction_strength", dims=("layer", "head"), probe="default", requires="classifier", units=PROB,
          description="icl-dynamics: mean over probe sequences (A la B lb Q) of A[query, correct label] - "
                      "A[query, wrong label]; correct label at 2*ci+1, wrong at 2*(1-ci)+1 (ci = correct_index). "
                      "Other classifier probes: attention on the label tokens of the items matching the query "
                      "(class, else label) minus |match|/|other| times that on the other items' label tokens")
def induction_strength(model, probe, clean, ctx):
    # one formula for every classifier probe: on the paper's `A la B lb Q` probe (one matching and one
    # other item) it is the notebook's A[query, correct label] - A[query, wrong label]
    return induction_strengths(ctx.patterns(), probe)


def _reconstituted(probe, ctx, side: str, name: str):
    T = repeat_length(probe, name)
    return ctx.reconstituted_scores(side, functools.partial(induction_from_pattern, T=T))


@register("reconstituted_induction_q", dims=("layer", "head", "src_layer", "src_head"), probe="repeated_tokens",
          requires="lm", units=PROB,
          description="induction_score of (layer, head) recomputed from the cached resid_pre with the output of "
                      "src head removed from the query-side input only (LN recomputed); NaN where src_layer >= layer")
def reconstituted_induction_q(model, probe, clean, ctx):
    return _reconstituted(probe, ctx, "q", "reconstituted_induction_q")


@register("reconstituted_induction_k", dims=("layer", "head", "src_layer", "src_head"), probe="repeated_tokens",
          requires="lm", units=PROB,
          description="induction_score of (layer, head) recomputed from the cached resid_pre with the output of "
                      "src head removed from the key-side input only (LN recomputed); NaN where src_layer >= layer")
def reconstituted_induction_k(model, probe, clean, ctx):
    return _reconstituted(probe, ctx, "k", "reconstituted_induction_k")
