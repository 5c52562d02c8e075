"""Transformer building blocks with full activation access: LayerNorm, attention, MLP, block.

Shapes are for one sequence (vmap for batches): `T` positions, `H` heads, `d` model width,
`e` head width. Attention weights use the per-head layout researchers know from
TransformerLens: `W_Q, W_K, W_V: (H, d, e)`, `W_O: (H, e, d)`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._aux import Cache, ModuleWithAux, make_cache_assign, sub_cache
from ._config import ModelConfig

MASKED_SCORE = -1e30  # pre-softmax score of a key a query may not see (exp underflows to 0)


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


class LayerNorm(ModuleWithAux):
    """LayerNorm over the last axis; exposes `scale` (T, 1) so it can be frozen through the cache."""

    w: Float[Array, " d"] | None
    b: Float[Array, " d"] | None
    eps: float = eqx.field(static=True)

    def __init__(self, d_model: int, *, enabled: bool = True, eps: float = 1e-5):
        self.w = jnp.ones((d_model,), jnp.float32) if enabled else None
        self.b = jnp.zeros((d_model,), jnp.float32) if enabled else None
        self.eps = eps

    def call_with_all_aux(self, x, *, cache=None, cache_mask=None, key=None) -> dict:
        r: dict = {}
        assign = make_cache_assign(r, cache, cache_mask)
        if self.w is None:
            assign("out", x)
            return r
        centered = x - x.mean(-1, keepdims=True)
        scale = assign("scale", jnp.sqrt((centered**2).mean(-1, keepdims=True) + self.eps))
        assign("out", centered / scale * self.w + self.b)
        return r


def rotate_interleaved(x: Float[Array, "H T e"], base: float) -> Float[Array, "H T e"]:
    """Rotary embedding with interleaved pairs: components (2i, 2i+1) turn by p * base^(-2i/e)."""
    _, n_pos, e = x.shape
    inv_freq = base ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)
    angle = jnp.arange(n_pos, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, e/2)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    a, b = x[..., 0::2], x[..., 1::2]
    return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


class Attention(ModuleWithAux):
    """Multi-head causal self-attention exposing q, k, v, scores, pattern, z and per-head results."""

    W_Q: Float[Array, "H d e"]
    W_K: Float[Array, "H d e"]
    W_V: Float[Array, "H d e"]
    W_O: Float[Array, "H e d"]
    b_Q: Float[Array, "H e"] | None
    b_K: Float[Array, "H e"] | None
    b_V: Float[Array, "H e"] | None
    b_O: Float[Array, " d"] | None
    rope_base: float | None = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key):
        kq, kk, kv, ko = jax.random.split(key, 4)
        H, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = _normal(kq, (H, d, e), cfg.init_std)
        self.W_K = _normal(kk, (H, d, e), cfg.init_std)
        self.W_V = _normal(kv, (H, d, e), cfg.init_std)
        self.W_O = _normal(ko, (H, e, d), cfg.init_std)
        zeros_he = jnp.zeros((H, e), jnp.float32)
        self.b_Q = zeros_he if cfg.qkv_bias else None
        self.b_K = zeros_he if cfg.qkv_bias else None
        self.b_V = zeros_he if cfg.qkv_bias else None
        self.b_O = jnp.zeros((d,), jnp.float32) if cfg.out_bias else None
        self.rope_base = cfg.rope_base if cfg.positional == "rope" else None

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    def project(self, x: Float[Array, "T d"], which: str) -> Float[Array, "H T e"]:
        """Queries, keys or values (`which` in q/k/v) of every head for normalized input `x`."""
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[which]
        out = jnp.einsum("td,hde->hte", x, W)
        return out if b is None else out + b[:, None, :]

    def scores_from(self, q: Float[Array, "H T e"], k: Float[Array, "H T e"]) -> Float[Array, "H T T"]:
        """Causally masked pre-softmax scores from (unrotated) queries and keys."""
        if self.rope_base is not None:
            q, k = rotate_interleaved(q, self.rope_base), rotate_interleaved(k, self.rope_base)
        n_pos = q.shape[1]
        scores = jnp.einsum("hqe,hke->hqk", q, k) / math.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((n_pos, n_pos), bool))
        return jnp.where(causal, scores, MASKED_SCORE)

    def pattern_from(self, xq: Float[Array, "T d"], xk: Float[Array, "T d"]) -> Float[Array, "H T T"]:
        """Attention pattern recomputed from separate query-side and key-side inputs (reconstitution)."""
        return jax.nn.softmax(self.scores_from(self.project(xq, "q"), self.project(xk, "k")), axis=-1)

    def head_results(self, z: Float[Array, "H T e"]) -> Float[Array, "H T d"]:
        """What each head writes into the residual stream (output bias excluded)."""
        return jnp.einsum("hte,hed->htd", z, self.W_O)

    def call_with_all_aux(self, x, *, cache=None, cache_mask=None, key=None) -> dict:
        r: dict = {}
        assign = make_cache_assign(r, cache, cache_mask)
        q = assign("q", self.project(x, "q"))
        k = assign("k", self.project(x, "k"))
        v = assign("v", self.project(x, "v"))
        scores = assign("scores", self.scores_from(q, k))
        pattern = assign("pattern", jax.nn.softmax(scores, axis=-1))
        z = assign("z", jnp.einsum("hqk,hke->hqe", pattern, v))
        if cache and "result" in cache:
            out = assign("result", self.head_results(z)).sum(0)
        else:  # one fused matmul; the per-head results are exposed but cost nothing unless used
            r["result"] = self.head_results(z)
            out = jnp.einsum("hte,hed->td", z, self.W_O)
        if self.b_O is not None:
            out = out + self.b_O
        assign("out", out)
        return r


class MLP(ModuleWithAux):
    """Position-wise MLP (gelu_new, gelu, relu or SwiGLU) exposing pre- and post-activations."""

    W_in: Float[Array, "d m"]
    W_out: Float[Array, "m d"]
    b_in: Float[Array, " m"] | None
    b_out: Float[Array, " d"] | None
    W_gate: Float[Array, "d m"] | None
    activation: str = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key):
        k_in, k_out, k_gate = jax.random.split(key, 3)
        d, m = cfg.d_model, cfg.mlp_width
        self.W_in = _normal(k_in, (d, m), cfg.init_std)
        self.W_out = _normal(k_out, (m, d), cfg.init_std)
        self.b_in = jnp.zeros((m,), jnp.float32) if cfg.mlp_bias else None
        self.b_out = jnp.zeros((d,), jnp.float32) if cfg.mlp_bias else None
        self.W_gate = _normal(k_gate, (d, m), cfg.init_std) if cfg.activation == "swiglu" else None
        self.activation = cfg.activation

    def call_with_all_aux(self, x, *, cache=None, cache_mask=None, key=None) -> dict:
        r: dict = {}
        assign = make_cache_assign(r, cache, cache_mask)
        linear = x @ self.W_in
        if self.b_in is not None:
            linear = linear + self.b_in
        if self.activation == "swiglu":
            pre_linear = assign("pre_linear", linear)
            pre = assign("pre", x @ self.W_gate)
            post = assign("post", jax.nn.silu(pre) * pre_linear)
        else:
            pre = assign("pre", linear)
            act = {
                "gelu_new": lambda a: jax.nn.gelu(a, approximate=True),
                "gelu": lambda a: jax.nn.gelu(a, approximate=False),
                "relu": jax.nn.relu,
            }[self.activation]
            post = assign("post", act(pre))
        out = post @ self.W_out
        if self.b_out is not None:
            out = out + self.b_out
        assign("out", out)
        return r


class Block(ModuleWithAux):
    """Pre-LN transformer block: resid_mid = resid_pre + attn(ln1(resid_pre)), then the MLP likewise."""

    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm | None
    mlp: MLP | None

    def __init__(self, cfg: ModelConfig, *, key):
        k_attn, k_mlp = jax.random.split(key)
        self.ln1 = LayerNorm(cfg.d_model, enabled=cfg.layernorm, eps=cfg.ln_eps)
        self.attn = Attention(cfg, key=k_attn)
        self.ln2 = None if cfg.attn_only else LayerNorm(cfg.d_model, enabled=cfg.layernorm, eps=cfg.ln_eps)
        self.mlp = None if cfg.attn_only else MLP(cfg, key=k_mlp)

    def call_with_all_aux(self, x, *, cache=None, cache_mask=None, key=None) -> dict:
        r: dict = {}
        assign = make_cache_assign(r, cache, cache_mask)
        resid_pre = assign("resid_pre", x)
        r["ln1_output"] = self.ln1.call_with_all_aux(
            resid_pre, cache=sub_cache(cache, "ln1_output"), cache_mask=sub_cache(cache_mask, "ln1_output")
        )
        r["attn_output"] = self.attn.call_with_all_aux(
            r["ln1_output"]["out"], cache=sub_cache(cache, "attn_output"), cache_mask=sub_cache(cache_mask, "attn_output")
        )
        resid_mid = assign("resid_mid", resid_pre + r["attn_output"]["out"])
        if self.mlp is None:
            resid_post = assign("resid_post", resid_mid)
        else:
            r["ln2_output"] = self.ln2.call_with_all_aux(
                resid_mid, cache=sub_cache(cache, "ln2_output"), cache_mask=sub_cache(cache_mask, "ln2_output")
            )
            r["mlp_output"] = self.mlp.call_with_all_aux(
                r["ln2_output"]["out"], cache=sub_cache(cache, "mlp_output"), cache_mask=sub_cache(cache_mask, "mlp_output")
            )
            resid_post = assign("resid_post", resid_mid + r["mlp_output"]["out"])
        assign("out", resid_post)
        return r
