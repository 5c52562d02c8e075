"""The lean batched forward: transformer blocks on a whole (B, T, d) batch of residual streams at once.

`call_with_all_aux` runs one example and returns every activation (vmapped over a batch); this is
the same math for re-runs that need only the result: q, k and v from one fused (B*T, d) x
(d, 3*H*e) matmul with 1/sqrt(e) folded into W_Q, causal attention in query blocks that skip the
masked half, one output matmul, nothing else materialised. Intervention re-runs (head ablations)
start from a layer's residual stream with `run_blocks` and read the output with `unembed`.

Every architecture option of `ModelConfig` is computed exactly (rotary layouts and partial rotary
through `Attention.rotate`, grouped-query attention by the per-query-head key/value weights,
LayerNorm and RMSNorm, every MLP activation including SwiGLU, the parallel residual, the CRFM
score divisor); `batched_unsupported(config)` names an option added later that is not, and callers
then take the per-example forward.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._aux import to_rank
from ._config import ModelConfig
from ._layers import MASKED_SCORE

__all__ = ["SUPPORTED", "batched_unsupported", "causal_attention", "batched_attention", "attention_output",
           "block_forward", "block_with_z", "mlp_residual", "run_blocks", "unembed", "unembed_chunks", "chunked_token_metrics"]

# The values of each ModelConfig option the batched forward computes exactly; an option not listed
# (a new one) or a value not in its set sends callers to the per-example forward (`batched_unsupported`).
SUPPORTED = {
    "norm": {"layernorm", "rmsnorm"},
    "rope_layout": {"interleaved", "half"},
    "activation": {"gelu_new", "gelu", "relu", "swiglu"},
    "positional": {"learned", "rope", "none"},
    "parallel_residual": {False, True},
    "scale_attn_by_inverse_layer_idx": {False, True},
}
ANY_VALUE = {"n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "head", "vocab_size", "d_in", "n_labels",
             "attn_only", "layernorm", "ln_eps", "rope_base", "rotary_pct", "n_kv_heads", "qkv_bias", "out_bias",
             "mlp_bias", "tied_unembed", "unembed_bias", "init_std"}


def batched_unsupported(config: ModelConfig) -> str | None:
    """The first option of `config` the batched forward does not compute exactly, as `name=value`; None if none."""
    for name, value in config.to_dict().items():
        if name in ANY_VALUE:
            continue
        if name not in SUPPORTED or value not in SUPPORTED[name]:
            return f"{name}={value!r}"
    return None


QUERY_BLOCK = 32  # causal attention in query blocks of about this many rows: the masked half is skipped


def causal_attention(q, k, v):
    """softmax(q k^T, causal) v for (B, H, T, e) inputs (q already scaled by 1/sqrt(e)), in query
    blocks that see only the keys before them; each row is normalised after the value product."""
    n_pos = q.shape[2]
    causal = np.tril(np.ones((n_pos, n_pos), bool))
    bounds = np.linspace(0, n_pos, max(1, round(n_pos / QUERY_BLOCK)) + 1).astype(int)
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        scores = jnp.einsum("bhqe,bhke->bhqk", q[:, :, start:stop], k[:, :, :stop])
        scores = jnp.where(causal[start:stop, :stop], scores, MASKED_SCORE)
        weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
        z = jnp.einsum("bhqk,bhke->bhqe", weights, v[:, :, :stop])
        out.append(z / weights.sum(axis=-1)[..., None])
    return jnp.concatenate(out, axis=2)


def batched_attention(attn, x: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
    """Causal multi-head attention of a batch, the same math as `Attention.call_with_all_aux`.
    q, k and v come from one plain (B*T, d) x (d, 3*H*e) matmul with 1/sqrt(e) folded into W_Q, and
    the output from one (B*T, H*e) x (H*e, d) matmul: layouts XLA's CPU GEMM runs near peak (the
    per-head einsum forms measured ~10% slower per block)."""
    H, d, e = attn.W_Q.shape
    B, T, _ = x.shape
    scale = 1.0 / math.sqrt(e)
    if attn.score_divisor != 1.0:
        scale = scale / attn.score_divisor
    W = jnp.concatenate([attn.W_Q * scale, attn.head_weight("k"), attn.head_weight("v")], axis=0)  # (3H, d, e)
    qkv = x.reshape(B * T, d) @ W.transpose(1, 0, 2).reshape(d, 3 * H * e)
    if attn.b_Q is not None:
        biases = [attn.b_Q * scale, attn.head_bias("k"), attn.head_bias("v")]
        qkv = qkv + jnp.concatenate(biases, axis=0).reshape(1, 3 * H * e)
    qkv = qkv.reshape(B, T, 3 * H, e).transpose(0, 2, 1, 3)
    q, k, v = qkv[:, :H], qkv[:, H:2 * H], qkv[:, 2 * H:]
    if attn.rope_base is not None:  # a rotation: commutes with the scale folded into q
        rotate = jax.vmap(attn.rotate)
        q, k = rotate(q), rotate(k)
    return attention_output(attn, causal_attention(q, k, v))


def attention_output(attn, z: Float[Array, "B H T e"]) -> Float[Array, "B T d"]:
    """What the heads' z write to the residual stream: one (B*T, H*e) x (H*e, d) matmul and b_O."""
    B, H, T, e = z.shape
    d = attn.W_O.shape[-1]
    out = (z.transpose(0, 2, 1, 3).reshape(B * T, H * e) @ attn.W_O.reshape(H * e, d)).reshape(B, T, d)
    return out if attn.b_O is None else out + to_rank(attn.b_O, out.ndim)


def mlp_residual(block, resid_mid: Float[Array, "... d"], resid_pre: Float[Array, "... d"] | None = None) -> Float[Array, "... d"]:
    """resid_post from resid_mid (norm and MLP are position-wise: any leading axes); a parallel-residual
    block's MLP reads `resid_pre` instead."""
    if block.mlp is None:
        return resid_mid
    return resid_mid + block.mlp(block.ln2(block.mlp_input(resid_pre, resid_mid)))


def block_with_z(block, resid: Float[Array, "B T d"], z: Float[Array, "B H T e"]) -> Float[Array, "B T d"]:
    """One block whose heads' z are given (patched or ablated): q, k and the pattern are not computed."""
    return mlp_residual(block, resid + attention_output(block.attn, z), resid)


def block_forward(block, resid: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
    """One transformer block on a batch of residual streams (no cache, nothing else returned)."""
    return mlp_residual(block, resid + batched_attention(block.attn, block.ln1(resid)), resid)


def run_blocks(model, start: int, resid: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
    """The final residual stream after blocks `start`.. (the batched equivalent of `forward_from`)."""
    for block in model.blocks[start:]:
        resid = block_forward(block, resid)
    return resid


def unembed(model, resid: Float[Array, "... d"]) -> Float[Array, "... n_out"]:
    """Logits (or outputs) of final residual streams: the final norm, the unembedding and its bias."""
    logits = model.ln_final(resid) @ model.unembed_matrix
    return logits if model.b_U is None else logits + to_rank(model.b_U, logits.ndim)


VOCAB_CHUNK = 8192  # columns of the unembedding per step of a chunked cross-entropy
CHUNKED_VOCAB = 2 * VOCAB_CHUNK  # vocabularies from this size on are unembedded in chunks


def unembed_chunks(model) -> tuple[Float[Array, "n d C"], Float[Array, "n C"]] | None:
    """The unembedding split into `VOCAB_CHUNK`-column blocks (padded columns get a -inf bias) for
    `chunked_token_metrics`; None for a vocabulary under `CHUNKED_VOCAB` (unembedded whole)."""
    W = model.unembed_matrix
    d, V = W.shape
    if V < CHUNKED_VOCAB:
        return None
    n = -(-V // VOCAB_CHUNK)
    pad = n * VOCAB_CHUNK - V
    b = jnp.zeros((V,), W.dtype) if model.b_U is None else model.b_U
    W = jnp.pad(W, ((0, 0), (0, pad))).reshape(d, n, VOCAB_CHUNK).transpose(1, 0, 2)
    b = jnp.concatenate([b, jnp.full((pad,), -jnp.inf, b.dtype)]).reshape(n, VOCAB_CHUNK)
    return W, b


def chunked_token_metrics(model, resid: Float[Array, "B T d"], targets, chunks) -> tuple[Array, Array]:
    """Mean cross-entropy and argmax accuracy of `targets` (B, T) from final residual streams, the
    vocabulary taken `VOCAB_CHUNK` columns at a time (running max, sum of exponentials, first argmax
    and the target's logit): the (B, T, vocab) logits are never held at once."""
    h = model.ln_final(resid)
    W, b = chunks
    shape = targets.shape

    def step(carry, xs):
        top, total, best, best_at, picked = carry
        w, bias, offset = xs
        logits = h @ w + to_rank(bias, h.ndim)  # (B, T, C)
        chunk_top = logits.max(-1)
        new_top = jnp.maximum(top, chunk_top)
        total = total * jnp.exp(top - new_top) + jnp.exp(logits - new_top[..., None]).sum(-1)
        better = chunk_top > best  # ties keep the earlier chunk: jnp.argmax's first index
        best_at = jnp.where(better, offset + jnp.argmax(logits, -1), best_at)
        inside = (targets >= offset) & (targets < offset + logits.shape[-1])
        at = jnp.clip(targets - offset, 0, logits.shape[-1] - 1)
        picked = picked + jnp.where(inside, jnp.take_along_axis(logits, at[..., None], -1)[..., 0], 0.0)
        return (new_top, total, jnp.maximum(best, chunk_top), best_at, picked), None

    init = (jnp.full(shape, -jnp.inf, h.dtype), jnp.zeros(shape, h.dtype), jnp.full(shape, -jnp.inf, h.dtype),
            jnp.zeros(shape, targets.dtype), jnp.zeros(shape, h.dtype))
    offsets = jnp.arange(W.shape[0], dtype=targets.dtype) * W.shape[-1]
    (top, total, _, best_at, picked), _ = jax.lax.scan(step, init, (W, b, offsets))
    loss = (top + jnp.log(total) - picked).mean()
    return loss, (best_at == targets).astype(jnp.float32).mean()
