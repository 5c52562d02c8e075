"""The three built-in model heads: token LM, exemplar-label classifier, in-context regression.

Each registers its input embedding, the probe input kind that feeds it, its output size and its
config checks (`register_head`); a new head is one more registration here or in a plugin.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._aux import to_rank
from ._config import ModelConfig
from ._head_registry import ModelHead, register_head
from ._layers import _normal

__all__ = ["TokenEmbed", "ClassifierEmbed", "RegressionEmbed", "regression_tokens", "interleave_exemplars"]


def regression_tokens(xs: Float[Array, "K D"], ys: Float[Array, " K"]) -> Float[Array, "2K-1 D+1"]:
    """Tokens `x_1, y_1, ..., x_K` of size D+1: x with a zero y-slot, y with a zero x-slot (y_K never fed)."""
    n, _ = xs.shape
    x_tok = jnp.concatenate([xs, jnp.zeros((n, 1), xs.dtype)], axis=1)
    y_tok = jnp.concatenate([jnp.zeros_like(xs), ys[:, None].astype(xs.dtype)], axis=1)
    return interleave_exemplars(x_tok, y_tok)


def interleave_exemplars(examples: Float[Array, "P d"], labels: Float[Array, "P d"]) -> Float[Array, "T d"]:
    """Tokens `e_0, l_0, e_1, l_1, ..., e_{P-1}`: the query's label (last) is never fed in."""
    n_items, d = examples.shape
    pairs = jnp.stack([examples, labels], axis=1).reshape(2 * n_items, d)
    return pairs[:-1]


class TokenEmbed(eqx.Module):
    """Token embedding table and optional learned position embeddings (GPT-2's wte and wpe)."""

    W_E: Float[Array, "V d"]
    W_pos: Float[Array, "n_ctx d"] | None

    def __init__(self, cfg: ModelConfig, *, key):
        k_e, k_p = jax.random.split(key)
        self.W_E = _normal(k_e, (cfg.vocab_size, cfg.d_model), cfg.init_std)
        self.W_pos = _normal(k_p, (cfg.n_ctx, cfg.d_model), cfg.init_std) if cfg.positional == "learned" else None

    def __call__(self, tokens: Int[Array, " T"]) -> Float[Array, "T d"]:
        return self.W_E[tokens]


class ClassifierEmbed(eqx.Module):
    """Exemplars through a linear map with bias, labels through a bias-free table (one-hot map)."""

    W_ex: Float[Array, "d_in d"]
    b_ex: Float[Array, " d"]
    W_lab: Float[Array, "C d"]
    W_pos: Float[Array, "n_ctx d"] | None

    def __init__(self, cfg: ModelConfig, *, key):
        k_x, k_l, k_p = jax.random.split(key, 3)
        self.W_ex = _normal(k_x, (cfg.d_in, cfg.d_model), cfg.d_in**-0.5)
        self.b_ex = jnp.zeros((cfg.d_model,), jnp.float32)
        self.W_lab = _normal(k_l, (cfg.n_labels, cfg.d_model), cfg.init_std)
        self.W_pos = _normal(k_p, (cfg.n_ctx, cfg.d_model), cfg.init_std) if cfg.positional == "learned" else None

    def __call__(self, x: dict) -> Float[Array, "T d"]:
        """{"examples": (P, d_in), "labels": (P,)} -> exemplar and label tokens, interleaved."""
        h = x["examples"] @ self.W_ex
        return interleave_exemplars(h + to_rank(self.b_ex, h.ndim), self.W_lab[x["labels"]])


class RegressionEmbed(eqx.Module):
    """(x, y) tokens of size d_in = dim(x) + 1 through one linear map with bias (in-context regression)."""

    W_in: Float[Array, "d_in d"]
    b_in: Float[Array, " d"]
    W_pos: Float[Array, "n_ctx d"] | None

    def __init__(self, cfg: ModelConfig, *, key):
        k_x, k_p = jax.random.split(key)
        self.W_in = _normal(k_x, (cfg.d_in, cfg.d_model), cfg.d_in**-0.5)
        self.b_in = jnp.zeros((cfg.d_model,), jnp.float32)
        self.W_pos = _normal(k_p, (cfg.n_ctx, cfg.d_model), cfg.init_std) if cfg.positional == "learned" else None

    def __call__(self, x: dict) -> Float[Array, "T d"]:
        """{"xs": (K, D), "ys": (K,)} -> the tokens of `regression_tokens`, embedded."""
        h = regression_tokens(x["xs"], x["ys"]) @ self.W_in
        return h + to_rank(self.b_in, h.ndim)


def _check_lm(c: ModelConfig) -> None:
    if c.vocab_size <= 0:
        raise ValueError(f"model.vocab_size must be positive for a language model, got {c.vocab_size}")


def _check_classifier(c: ModelConfig) -> None:
    if c.d_in <= 0 or c.n_labels <= 1:
        raise ValueError(f"a classifier needs model.d_in > 0 and model.n_labels > 1, got d_in={c.d_in}, "
                         f"n_labels={c.n_labels}")
    if c.tied_unembed:
        raise ValueError("a classifier cannot tie its unembedding to a token embedding; set tied_unembed=false")


def _check_regression(c: ModelConfig) -> None:
    if c.d_in < 2:
        raise ValueError(f"a regression model needs model.d_in = dim(x) + 1 >= 2, got d_in={c.d_in}")
    if c.tied_unembed:
        raise ValueError("a regression model has no token embedding to tie; set tied_unembed=false")


register_head(ModelHead("lm", "token language model", "tokens", TokenEmbed, lambda c: c.vocab_size, _check_lm,
                        token_embedding=True))
register_head(ModelHead("classifier", "sequence classifier", "classifier", ClassifierEmbed, lambda c: c.n_labels,
                        _check_classifier, output_bias=True))
register_head(ModelHead("regression", "regression model", "regression", RegressionEmbed, lambda c: 1,
                        _check_regression, output_bias=True))
