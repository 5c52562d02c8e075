"""Single-head zero/mean ablation by the residual identity, with a lean re-run of later layers.

Removing head h of layer l changes only its term of the attention output, so the ablated
residual is `resid_mid' = resid_mid - (z_h - value_h) @ W_O[h]` (value 0 or the head's mean z):
layer l's attention is not re-run at all. Then layer l's MLP, blocks l+1.. and the unembedding
run on the whole probe batch at once (B*T rows per matmul, fused QKV, no per-head results
materialised), and the loss is read only at the rows the metric uses. Equal to the cache-based
re-run of `_interventions` up to float rounding (the tests compare both with the naive path).

Every architecture option of `ModelConfig` is handled exactly: rotary layouts and partial rotary
through `Attention.rotate`, grouped-query attention by repeating the shared key/value weights per
query head, RMSNorm and SwiGLU by re-running the MLP whole, and the parallel residual (the MLP
reads resid_pre, which an ablation in its own layer leaves unchanged: resid_post' = resid_post -
the head's term). `unsupported(config)` names an option this path does not know, and the engine's
context then uses the cache-based re-run instead.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from trainer.model import MASKED_SCORE, ModelConfig

from . import _interventions as iv

__all__ = ["head_ablation_metrics", "run_blocks", "block_forward", "unsupported"]

# The values of each ModelConfig option this path computes exactly; an option not listed (a new
# one) or a value not in its set sends the engine to the cache-based re-run (`unsupported`).
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


def unsupported(config: ModelConfig) -> str | None:
    """The first option of `config` this path does not compute exactly, as `name=value`; None if none."""
    for name, value in config.to_dict().items():
        if name in ANY_VALUE:
            continue
        if name not in SUPPORTED or value not in SUPPORTED[name]:
            return f"{name}={value!r}"
    return None


QUERY_BLOCK = 32  # causal attention in query blocks of about this many rows: the masked half is skipped


def _causal_attention(q, k, v):
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


def _attention(attn, x: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
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
        qkv = qkv + jnp.concatenate(biases, axis=0).reshape(3 * H * e)
    qkv = qkv.reshape(B, T, 3 * H, e).transpose(0, 2, 1, 3)
    q, k, v = qkv[:, :H], qkv[:, H:2 * H], qkv[:, 2 * H:]
    if attn.rope_base is not None:  # a rotation: commutes with the scale folded into q
        rotate = jax.vmap(attn.rotate)
        q, k = rotate(q), rotate(k)
    z = _causal_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B * T, H * e)
    out = (z @ attn.W_O.reshape(H * e, d)).reshape(B, T, d)
    return out if attn.b_O is None else out + attn.b_O


def _mlp(block, resid_mid: Float[Array, "... d"], resid_pre: Float[Array, "... d"] | None = None) -> Float[Array, "... d"]:
    """resid_post from resid_mid (norm and MLP are position-wise: any leading axes); a parallel-residual
    block's MLP reads `resid_pre` instead."""
    if block.mlp is None:
        return resid_mid
    return resid_mid + block.mlp(block.ln2(block.mlp_input(resid_pre, resid_mid)))


def block_forward(block, resid: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
    """One transformer block on a batch of residual streams (no cache, nothing else returned)."""
    return _mlp(block, resid + _attention(block.attn, block.ln1(resid)), resid)


def run_blocks(model, start: int, resid: Float[Array, "B T d"]) -> Float[Array, "B T d"]:
    """The final residual stream after blocks `start`.. (the batched equivalent of `forward_from`)."""
    for block in model.blocks[start:]:
        resid = block_forward(block, resid)
    return resid


def _unembed(model, resid: Float[Array, "... d"]) -> Float[Array, "... n_out"]:
    logits = model.ln_final(resid) @ model.unembed_matrix
    return logits if model.b_U is None else logits + model.b_U


def _metrics(model, resid: Float[Array, "B T d"], probe) -> tuple[Array, Array]:
    """Probe loss and accuracy from the final residual, unembedding only the rows the metric reads."""
    if probe.kind == "tokens":
        logits = _unembed(model, resid[:, :-1])  # positions 0..S-2 predict tokens 1..S-1
        target = probe.arrays["tokens"][:, 1:]
        correct = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
        loss = (jax.nn.logsumexp(logits, axis=-1) - correct).mean()
        return loss, (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32).mean()
    if probe.kind == "classifier":  # only the query (last) position is scored
        return iv.probe_metrics(_unembed(model, resid[:, -1:]), probe)
    return iv.probe_metrics(_unembed(model, resid), probe)


def _factored_mlp(block, resid_mid: Float[Array, "B T d"]):
    """`f(dz_h, W_O_h) -> resid_post` of the ablated layer, where the removed head's term enters the
    MLP's first matmul through its e-dimensional z only: LN2(x - dz W_O_h) W_in =
    ((xc * w) W_in - dz (W_O_h (w * W_in)) + mean(dz W_O_h) (w W_in)) / sigma' + b W_in, with x's
    centred product shared by all heads and sigma' the ablated row's own LN scale (exact algebra).
    None where it does not apply (no MLP, no LayerNorm, RMSNorm, SwiGLU, parallel residual): then
    the MLP is re-run whole, or for a parallel residual left at its clean output."""
    mlp, ln = block.mlp, block.ln2
    if mlp is None or ln.w is None or not ln.center or mlp.W_gate is not None or block.parallel:
        return None
    centred = resid_mid - resid_mid.mean(-1, keepdims=True)
    shared = (centred * ln.w) @ mlp.W_in  # (B, T, m): once per layer
    w_in = ln.w[:, None] * mlp.W_in  # (d, m)
    col = ln.w @ mlp.W_in
    const = ln.b @ mlp.W_in if mlp.b_in is None else ln.b @ mlp.W_in + mlp.b_in
    act = {"gelu_new": lambda a: jax.nn.gelu(a, approximate=True),
           "gelu": lambda a: jax.nn.gelu(a, approximate=False), "relu": jax.nn.relu}[mlp.activation]

    def resid_post(dz: Float[Array, "B T e"], w_o: Float[Array, "e d"]) -> Float[Array, "B T d"]:
        removed = dz @ w_o  # (B, T, d)
        mean_removed = removed.mean(-1, keepdims=True)
        ablated_centred = centred - (removed - mean_removed)
        scale = jnp.sqrt((ablated_centred ** 2).mean(-1, keepdims=True) + ln.eps)
        pre = (shared - dz @ (w_o @ w_in) + mean_removed * col) / scale + const
        out = act(pre) @ mlp.W_out
        out = out if mlp.b_out is None else out + mlp.b_out
        return resid_mid - removed + out

    return resid_post


def head_ablation_metrics(
    model, probe, clean: dict, *, ablation: str = "zero", head_batching: str = "map"
) -> tuple[Float[Array, "layer head"], Float[Array, "layer head"]]:
    """Probe loss and accuracy with each single head's z replaced by 0 or its mean (no preservation)."""
    losses, accs = [], []
    clean_metrics = iv.probe_metrics(clean["logits"], probe)
    for layer, out in enumerate(clean["layer_outputs"]):
        block = model.blocks[layer]
        z = out["attn_output"]["z"]  # (B, H, T, e)
        dz = z - iv.ablation_value(z, ablation)  # what each head's removal takes away, before W_O
        resid_mid, resid_post = out["resid_mid"], out["resid_post"]
        factored = _factored_mlp(block, resid_mid)

        def one(h, layer=layer, block=block, dz=dz, resid_mid=resid_mid, resid_post=resid_post, factored=factored):
            dz_h, w_o = jnp.take(dz, h, axis=1), block.attn.W_O[h]
            if block.parallel:  # the MLP read resid_pre, which this ablation does not change
                resid = resid_post - dz_h @ w_o
            elif factored is None:
                resid = _mlp(block, resid_mid - dz_h @ w_o)
            else:
                resid = factored(dz_h, w_o)
            metrics = _metrics(model, run_blocks(model, layer + 1, resid), probe)
            # a head that removes nothing (a dead head: W_O = 0) has exactly the clean metrics
            removes = jnp.any(dz_h @ w_o != 0)
            return tuple(jnp.where(removes, m, c) for m, c in zip(metrics, clean_metrics))

        loss, acc = iv.map_heads(one, z.shape[1], head_batching)
        losses.append(loss)
        accs.append(acc)
    return jnp.stack(losses), jnp.stack(accs)
