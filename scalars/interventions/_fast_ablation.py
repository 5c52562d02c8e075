"""Single-head zero/mean ablation by the residual identity, with a lean re-run of later layers.

Removing head h of layer l changes only its term of the attention output, so the ablated
residual is `resid_mid' = resid_mid - (z_h - value_h) @ W_O[h]` (value 0 or the head's mean z):
layer l's attention is not re-run at all. Then layer l's MLP, blocks l+1.. and the unembedding
run on the whole probe batch at once through the model's batched forward
(`trainer.model.run_blocks`), and the loss is read only at the rows the metric uses. Equal to the cache-based
re-run of `_ablation` up to float rounding (the tests compare both with the naive path).

Every architecture option the batched forward covers is handled exactly here too: RMSNorm and
SwiGLU by re-running the ablated layer's MLP whole, the parallel residual by leaving it (the MLP
reads resid_pre, which an ablation in its own layer leaves unchanged: resid_post' = resid_post -
the head's term). `unsupported(config)` names an option the batched forward does not know, and
the engine's context then uses the cache-based re-run instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from trainer.model import ModelConfig, batched_unsupported, mlp_residual, run_blocks, to_rank

from . import _ablation as iv

__all__ = ["head_ablation_metrics", "unsupported"]


def unsupported(config: ModelConfig) -> str | None:
    """The first option of `config` this path does not compute exactly (the batched forward's), or None."""
    return batched_unsupported(config)

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
    shared = (centred * to_rank(ln.w, centred.ndim)) @ mlp.W_in  # (B, T, m): once per layer
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
        pre = (shared - dz @ (w_o @ w_in) + mean_removed * to_rank(col, 3)) / scale + to_rank(const, 3)
        out = act(pre) @ mlp.W_out
        out = out if mlp.b_out is None else out + to_rank(mlp.b_out, out.ndim)
        return resid_mid - removed + out

    return resid_post


def head_ablation_metrics(
    model, probe, clean: dict, *, ablation: str = "zero", head_batching: str = "map"
) -> tuple[Float[Array, "layer head"], Float[Array, "layer head"]]:
    """Probe loss and accuracy with each single head's z replaced by 0 or its mean (no preservation)."""
    losses, accs = [], []
    clean_metrics = iv.probe_metrics(clean["logits"], probe)
    kind = probe.input_kind
    chunks = kind.vocab_chunks(model)
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
                resid = mlp_residual(block, resid_mid - dz_h @ w_o)
            else:
                resid = factored(dz_h, w_o)
            metrics = kind.resid_metrics(model, run_blocks(model, layer + 1, resid), probe.arrays, chunks)
            # a head that removes nothing (a dead head: W_O = 0) has exactly the clean metrics
            removes = jnp.any(dz_h @ w_o != 0)
            return tuple(jnp.where(removes, m, c) for m, c in zip(metrics, clean_metrics))

        loss, acc = iv.map_heads(one, z.shape[1], head_batching)
        losses.append(loss)
        accs.append(acc)
    return jnp.stack(losses), jnp.stack(accs)
