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

from ._aux import Cache, ModuleWithAux, make_cache_assign, sub_cache, to_rank
from ._config import ModelConfig

MASKED_SCORE = -1e30  # pre-softmax score of a key a query may not see (exp underflows to 0)


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


class LayerNorm(ModuleWithAux):
    """LayerNorm (or, with `kind="rmsnorm"`, RMSNorm: no centring, no bias) over the last axis;
    exposes `scale` (T, 1) so it can be frozen through the cache."""

    w: Float[Array, " d"] | None
    b: Float[Array, " d"] | None
    eps: float = eqx.field(static=True)
    center: bool = eqx.field(static=True)

    def __init__(self, d_model: int, *, enabled: bool = True, eps: float = 1e-5, kind: str = "layernorm"):
        if kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm kind {kind!r}; choose layernorm or rmsnorm")
        self.center = kind == "layernorm"
        self.w = jnp.ones((d_model,), jnp.float32) if enabled else None
        self.b = jnp.zeros((d_model,), jnp.float32) if enabled and self.center else None
        self.eps = eps

    def centred(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """`x` minus its mean over the last axis (LayerNorm), or `x` itself (RMSNorm)."""
        return x - x.mean(-1, keepdims=True) if self.center else x

    def linear_part(self, x: Float[Array, "... d"], scale: Float[Array, "... 1"]) -> Float[Array, "... d"]:
        """The norm of a contribution `x` with the scale frozen at `scale`: the linear map that direct
        logit attribution pushes a head's output through (no bias: it belongs to no one head)."""
        return self.centred(x) / scale * to_rank(self.w, x.ndim)

    def call_with_all_aux(self, x, *, cache=None, cache_mask=None, key=None) -> dict:
        r: dict = {}
        assign = make_cache_assign(r, cache, cache_mask)
        if self.w is None:
            assign("out", x)
            return r
        centered = self.centred(x)
        scale = assign("scale", jnp.sqrt((centered**2).mean(-1, keepdims=True) + self.eps))
        out = centered / scale * to_rank(self.w, x.ndim)
        assign("out", out if self.b is None else out + to_rank(self.b, x.ndim))
        return r


def norm_for(cfg: ModelConfig) -> LayerNorm:
    """The norm `cfg` puts before attention, MLP and unembedding (LayerNorm, RMSNorm or none)."""
    return LayerNorm(cfg.d_model, enabled=cfg.layernorm, eps=cfg.ln_eps, kind=cfg.norm)


def rotate_interleaved(x: Float[Array, "H T e"], base: float) -> Float[Array, "H T e"]:
    """Rotary embedding with interleaved pairs: components (2i, 2i+1) turn by p * base^(-2i/e)."""
    _, n_pos, e = x.shape
    inv_freq = base ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)
    angle = jnp.arange(n_pos, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, e/2)
    cos, sin = to_rank(jnp.cos(angle), x.ndim), to_rank(jnp.sin(angle), x.ndim)
    a, b = x[..., 0::2], x[..., 1::2]
    return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def rotate_half(x: Float[Array, "H T e"], base: float) -> Float[Array, "H T e"]:
    """Rotary embedding in GPT-NeoX / Llama's layout: component i pairs with i + e/2, both turned
    by p * base^(-2i/e) (`x * cos + rotate_half(x) * sin` with cos, sin repeated over the halves)."""
    _, n_pos, e = x.shape
    inv_freq = base ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)
    angle = jnp.arange(n_pos, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, e/2)
    cos, sin = to_rank(jnp.cos(angle), x.ndim), to_rank(jnp.sin(angle), x.ndim)
    a, b = x[..., : e // 2], x[..., e // 2:]
    return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


ROTATIONS = {"interleaved": rotate_interleaved, "half": rotate_half}


def apply_rotary(x: Float[Array, "H T e"], base: float, layout: str, rotary_dim: int) -> Float[Array, "H T e"]:
    """Rotate the first `rotary_dim` dims of every head (layout `interleaved` or `half`); the rest pass."""
    rotate = ROTATIONS[layout]
    if rotary_dim == x.shape[-1]:
        return rotate(x, base)
    return jnp.concatenate([rotate(x[..., :rotary_dim], base), x[..., rotary_dim:]], axis=-1)


class Attention(ModuleWithAux):
    """Multi-head causal self-attention exposing q, k, v, scores, pattern, z and per-head results.

    With grouped-query attention `W_K`, `W_V` (and biases) hold `G = n_kv_heads` heads, query head h
    reading kv head `h // (H / G)`; the exposed k and v are per query head all the same (the shared
    head repeated), so every activation, score and intervention is indexed by query head.
    """

    W_Q: Float[Array, "H d e"]
    W_K: Float[Array, "G d e"]
    W_V: Float[Array, "G d e"]
    W_O: Float[Array, "H e d"]
    b_Q: Float[Array, "H e"] | None
    b_K: Float[Array, "G e"] | None
    b_V: Float[Array, "G e"] | None
    b_O: Float[Array, " d"] | None
    rope_base: float | None = eqx.field(static=True)
    rope_layout: str = eqx.field(static=True)
    rotary_dim: int = eqx.field(static=True)
    score_divisor: float = eqx.field(static=True)  # scores / sqrt(e) / this: layer + 1 (CRFM GPT-2), else 1

    def __init__(self, cfg: ModelConfig, *, key, layer: int = 0):
        kq, kk, kv, ko = jax.random.split(key, 4)
        H, G, d, e = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.W_Q = _normal(kq, (H, d, e), cfg.init_std)
        self.W_K = _normal(kk, (G, d, e), cfg.init_std)
        self.W_V = _normal(kv, (G, d, e), cfg.init_std)
        self.W_O = _normal(ko, (H, e, d), cfg.init_std)
        self.b_Q = jnp.zeros((H, e), jnp.float32) if cfg.qkv_bias else None
        self.b_K = jnp.zeros((G, e), jnp.float32) if cfg.qkv_bias else None
        self.b_V = jnp.zeros((G, e), jnp.float32) if cfg.qkv_bias else None
        self.b_O = jnp.zeros((d,), jnp.float32) if cfg.out_bias else None
        self.rope_base = cfg.rope_base if cfg.positional == "rope" else None
        self.rope_layout = cfg.rope_layout
        self.rotary_dim = cfg.rotary_dim
        self.score_divisor = float(layer + 1) if cfg.scale_attn_by_inverse_layer_idx else 1.0

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.W_Q.shape[0] // self.W_K.shape[0]

    def per_query_head(self, a: Array | None) -> Array | None:
        """A key/value-side array with a leading kv-head axis repeated to one entry per query head."""
        if a is None or self.group_size == 1:
            return a
        return jnp.repeat(a, self.group_size, axis=0)

    def head_weight(self, which: str) -> Float[Array, "H d e"]:
        """W_Q, W_K or W_V (`which` in q/k/v) with one (d, e) matrix per query head."""
        return {"q": self.W_Q, "k": self.per_query_head(self.W_K), "v": self.per_query_head(self.W_V)}[which]

    def head_bias(self, which: str) -> Float[Array, "H e"] | None:
        """b_Q, b_K or b_V per query head (None without biases)."""
        return {"q": self.b_Q, "k": self.per_query_head(self.b_K), "v": self.per_query_head(self.b_V)}[which]

    def project(self, x: Float[Array, "T d"], which: str) -> Float[Array, "H T e"]:
        """Queries, keys or values (`which` in q/k/v) of every query head for normalized input `x`."""
        W, b = self.head_weight(which), self.head_bias(which)
        out = jnp.einsum("td,hde->hte", x, W)
        return out if b is None else out + b[:, None, :]

    def rotate(self, x: Float[Array, "H T e"]) -> Float[Array, "H T e"]:
        """Queries or keys with their rotary position embedding applied (unchanged without rope)."""
        if self.rope_base is None:
            return x
        return apply_rotary(x, self.rope_base, self.rope_layout, self.rotary_dim)

    def scores_from(self, q: Float[Array, "H T e"], k: Float[Array, "H T e"]) -> Float[Array, "H T T"]:
        """Causally masked pre-softmax scores from (unrotated) queries and keys."""
        q, k = self.rotate(q), self.rotate(k)
        n_pos = q.shape[1]
        scores = jnp.einsum("hqe,hke->hqk", q, k) / math.sqrt(q.shape[-1])
        if self.score_divisor != 1.0:
            scores = scores / self.score_divisor
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
            out = out + to_rank(self.b_O, out.ndim)
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
            linear = linear + to_rank(self.b_in, linear.ndim)
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
            out = out + to_rank(self.b_out, out.ndim)
        assign("out", out)
        return r


class Block(ModuleWithAux):
    """Pre-LN transformer block: resid_mid = resid_pre + attn(ln1(resid_pre)), then the MLP likewise.

    With `parallel_residual` (GPT-NeoX) the MLP reads `ln2(resid_pre)` instead of `ln2(resid_mid)`;
    `resid_mid` is still resid_pre + the attention output and resid_post = resid_mid + the MLP output,
    so a cache edit of resid_mid reaches resid_post but not the MLP's input.
    """

    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm | None
    mlp: MLP | None
    parallel: bool = eqx.field(static=True)

    def __init__(self, cfg: ModelConfig, *, key, layer: int = 0):
        k_attn, k_mlp = jax.random.split(key)
        self.ln1 = norm_for(cfg)
        self.attn = Attention(cfg, key=k_attn, layer=layer)
        self.ln2 = None if cfg.attn_only else norm_for(cfg)
        self.mlp = None if cfg.attn_only else MLP(cfg, key=k_mlp)
        self.parallel = cfg.parallel_residual

    def mlp_input(self, resid_pre: Float[Array, "... d"], resid_mid: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """The residual stream the MLP's norm reads: resid_pre (parallel residual) or resid_mid."""
        return resid_pre if self.parallel else resid_mid

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
                self.mlp_input(resid_pre, resid_mid), cache=sub_cache(cache, "ln2_output"), cache_mask=sub_cache(cache_mask, "ln2_output")
            )
            r["mlp_output"] = self.mlp.call_with_all_aux(
                r["ln2_output"]["out"], cache=sub_cache(cache, "mlp_output"), cache_mask=sub_cache(cache_mask, "mlp_output")
            )
            resid_post = assign("resid_post", resid_mid + r["mlp_output"]["out"])
        assign("out", resid_post)
        return r
