"""Losses and accuracies shared by the trainer and the engine (single sequence; vmap for batches)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def next_token_losses(logits: Float[Array, "T V"], tokens: Int[Array, " T"]) -> Float[Array, " T-1"]:
    """Cross-entropy of positions 0..T-2 predicting tokens 1..T-1."""
    logp = jax.nn.log_softmax(logits[:-1], axis=-1)
    return -jnp.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]


def next_token_correct(logits: Float[Array, "T V"], tokens: Int[Array, " T"]) -> Float[Array, " T-1"]:
    """1.0 where the argmax at position i equals token i+1."""
    return (jnp.argmax(logits[:-1], axis=-1) == tokens[1:]).astype(jnp.float32)


def query_loss(logits: Float[Array, "T C"], target: Int[Array, ""]) -> Float[Array, ""]:
    """Classifier cross-entropy of the query (last position) against its label."""
    return -jax.nn.log_softmax(logits[-1])[target]


def query_correct(logits: Float[Array, "T C"], target: Int[Array, ""]) -> Float[Array, ""]:
    """1.0 where the query's argmax label is the target."""
    return (jnp.argmax(logits[-1]) == target).astype(jnp.float32)


def regression_predictions(logits: Float[Array, "T 1"]) -> Float[Array, " K"]:
    """The regression head's prediction of y_k, read at each x_k token (positions 0, 2, ..., T-1)."""
    return logits[0::2, 0]


def regression_losses(logits: Float[Array, "T 1"], ys: Float[Array, " K"]) -> Float[Array, " K"]:
    """Squared error of each context position's prediction (position k has seen k pairs)."""
    return (regression_predictions(logits) - ys) ** 2
