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
from jaxtyping import Array, Float

from ._aux import Cache, ModuleWithAux, layer_cache, make_cache_assign, sub_cache, to_rank
from ._config import ModelConfig
from ._head_registry import model_head
from ._heads import ClassifierEmbed, RegressionEmbed, TokenEmbed
from ._layers import Block, LayerNorm, _normal, norm_for


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
        head = model_head(config.head)
        self.embed = head.embed(config, key=k_embed)
        self.blocks = [Block(config, key=k, layer=i) for i, k in enumerate(jax.random.split(k_blocks, config.n_layers))]
        self.ln_final = norm_for(config)
        tied = head.token_embedding and config.tied_unembed
        self.W_U = None if tied else _normal(k_unembed, (config.d_model, config.n_outputs), config.init_std)
        use_bias = config.unembed_bias or head.output_bias
        self.b_U = jnp.zeros((config.n_outputs,), jnp.float32) if use_bias else None

    @property
    def unembed_matrix(self) -> Float[Array, "d n_out"]:
        return self.embed.W_E.T if self.W_U is None else self.W_U

    def embed_input(self, x, assign) -> Float[Array, "T d"]:
        """Embed tokens (T,), a classifier sequence {"examples": (P, d_in), "labels": (P,)} or a
        regression sequence {"xs": (K, D), "ys": (K,)} (tokens `regression_tokens`, T = 2K-1)."""
        resid = assign("embed", self.embed(x))
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
            logits = logits + to_rank(self.b_U, logits.ndim)
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
