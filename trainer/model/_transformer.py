"""The decoder-only transformer: token-LM, sequence-classifier and regression heads on one core.

`call_with_all_aux` returns `embed`, (`pos_embed`), `layer_outputs` (one dict per block),
`ln_final_output`, `logits` and `out` (= logits, shape (T, n_outputs)). `forward_from`
re-runs only the blocks from a given layer on, from a given residual stream: the engine's
prefix reuse for ablations and patches.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._aux import Cache, ModuleWithAux, layer_cache, make_cache_assign, sub_cache
from ._config import ModelConfig
from ._layers import Block, LayerNorm, _normal, norm_for


class TokenEmbed(eqx.Module):
    """Token embedding table and optional learned position embeddings (GPT-2's wte and wpe)."""

    W_E: Float[Array, "V d"]
    W_pos: Float[Array, "n_ctx d"] | None

    def __init__(self, cfg: ModelConfig, *, key):
        k_e, k_p = jax.random.split(key)
        self.W_E = _normal(k_e, (cfg.vocab_size, cfg.d_model), cfg.init_std)
        self.W_pos = _normal(k_p, (cfg.n_ctx, cfg.d_model), cfg.init_std) if cfg.positional == "learned" else None


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


class Transformer(ModuleWithAux):
    """Decoder-only transformer; `config.head` picks the token-LM or the sequence-classifier input."""

    config: ModelConfig = eqx.field(static=True)
    embed: TokenEmbed | ClassifierEmbed | RegressionEmbed
    blocks: list[Block]
    ln_final: LayerNorm
    W_U: Float[Array, "d n_out"] | None
    b_U: Float[Array, " n_out"] | None

    def __init__(self, config: ModelConfig, *, key):
        k_embed, k_blocks, k_unembed = jax.random.split(key, 3)
        self.config = config
        embed_cls = {"lm": TokenEmbed, "classifier": ClassifierEmbed, "regression": RegressionEmbed}[config.head]
        self.embed = embed_cls(config, key=k_embed)
        self.blocks = [Block(config, key=k, layer=i) for i, k in enumerate(jax.random.split(k_blocks, config.n_layers))]
        self.ln_final = norm_for(config)
        tied = config.head == "lm" and config.tied_unembed
        self.W_U = None if tied else _normal(k_unembed, (config.d_model, config.n_outputs), config.init_std)
        use_bias = config.unembed_bias or config.head in ("classifier", "regression")
        self.b_U = jnp.zeros((config.n_outputs,), jnp.float32) if use_bias else None

    @property
    def unembed_matrix(self) -> Float[Array, "d n_out"]:
        return self.embed.W_E.T if self.W_U is None else self.W_U

    def embed_input(self, x, assign) -> Float[Array, "T d"]:
        """Embed tokens (T,), a classifier sequence {"examples": (P, d_in), "labels": (P,)} or a
        regression sequence {"xs": (K, D), "ys": (K,)} (tokens `regression_tokens`, T = 2K-1)."""
        if self.config.head == "lm":
            tokens: Int[Array, " T"] = x
            resid = assign("embed", self.embed.W_E[tokens])
        elif self.config.head == "regression":
            resid = assign("embed", regression_tokens(x["xs"], x["ys"]) @ self.embed.W_in + self.embed.b_in)
        else:
            ex = x["examples"] @ self.embed.W_ex + self.embed.b_ex
            lab = self.embed.W_lab[x["labels"]]
            resid = assign("embed", interleave_exemplars(ex, lab))
        if self.embed.W_pos is not None:
            n_pos = resid.shape[0]
            if n_pos > self.embed.W_pos.shape[0]:
                raise ValueError(f"sequence of length {n_pos} is longer than the model's n_ctx={self.embed.W_pos.shape[0]}")
            resid = resid + assign("pos_embed", self.embed.W_pos[:n_pos])
        return resid

    def unembed(self, resid: Float[Array, "T d"], r: dict, *, cache=None, cache_mask=None) -> Float[Array, "T n_out"]:
        """Final LayerNorm and unembedding of a residual stream; fills `ln_final_output` and `logits`."""
        assign = make_cache_assign(r, cache, cache_mask)
        r["ln_final_output"] = self.ln_final.call_with_all_aux(
            resid, cache=sub_cache(cache, "ln_final_output"), cache_mask=sub_cache(cache_mask, "ln_final_output")
        )
        logits = r["ln_final_output"]["out"] @ self.unembed_matrix
        if self.b_U is not None:
            logits = logits + self.b_U
        return assign("logits", logits)

    def forward_from(
        self, start: int, resid: Float[Array, "T d"], *, cache: Cache | None = None, cache_mask: Cache | None = None
    ) -> dict:
        """Run blocks `start..L-1` from residual `resid` (block `start`'s resid_pre), then unembed.

        `layer_outputs` has one entry per layer; entries before `start` are empty dicts.
        """
        r: dict = {"layer_outputs": [{} for _ in range(start)]}
        for layer in range(start, len(self.blocks)):
            out = self.blocks[layer].call_with_all_aux(
                resid, cache=layer_cache(cache, layer), cache_mask=layer_cache(cache_mask, layer)
            )
            r["layer_outputs"].append(out)
            resid = out["out"]
        logits = self.unembed(resid, r, cache=cache, cache_mask=cache_mask)
        make_cache_assign(r, cache, cache_mask)("out", logits)
        return r

    def call_with_all_aux(self, x, *, cache: Cache | None = None, cache_mask: Cache | None = None, key=None) -> dict:
        r: dict = {}
        resid = self.embed_input(x, make_cache_assign(r, cache, cache_mask))
        r.update(self.forward_from(0, resid, cache=cache, cache_mask=cache_mask))
        return r
