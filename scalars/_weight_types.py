"""Built-in weight-based types: Q/K/V composition scores (Elhage et al. 2021), no probe needed.

With the per-head layout `W_O[h]: (e, d)` and `W_Q[h], W_K[h], W_V[h]: (d, e)`, the score of
source head (s, g) into destination head (l, h) is
`||W_O^{s,g} W_X^{l,h}||_F / (||W_O^{s,g}||_F ||W_X^{l,h}||_F)` (LayerNorm ignored); 0 where a
norm is 0, NaN where src_layer >= layer.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._registry import register

__all__ = ["composition_scores"]

PAIR_DIMS = ("layer", "head", "src_layer", "src_head")


def composition_scores(model, which: str) -> Float[Array, "layer head src_layer src_head"]:
    """Composition of every earlier head's output into `which` (q, k or v) of every head."""
    blocks = model.blocks
    n_layers, n_heads = len(blocks), blocks[0].attn.n_heads
    out = jnp.full((n_layers, n_heads, n_layers, n_heads), jnp.nan, jnp.float32)
    for layer in range(1, n_layers):
        attn = blocks[layer].attn
        W_X = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[which]  # (H, d, e)
        norm_x = jnp.sqrt((W_X**2).sum((1, 2)))  # (H,)
        for src in range(layer):
            W_O = blocks[src].attn.W_O  # (G, e, d)
            prod = jnp.einsum("ged,hdf->hgef", W_O, W_X)
            num = jnp.sqrt((prod**2).sum((2, 3)))  # (H, G)
            den = norm_x[:, None] * jnp.sqrt((W_O**2).sum((1, 2)))[None, :]
            out = out.at[layer, :, src, :].set(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0))
    return out


def _register(which: str) -> None:
    name = f"composition_{which}"

    @register(name, dims=PAIR_DIMS, probe=None, units="ratio of Frobenius norms",
              description=f"{which.upper()}-composition of src head into (layer, head): "
                          f"||W_O^src W_{which.upper()}^dst||_F / (||W_O^src||_F ||W_{which.upper()}^dst||_F); "
                          "NaN where src_layer >= layer")
    def composition(model, probe, clean, ctx):
        return composition_scores(model, which)

    composition.__name__ = name


for _which in ("q", "k", "v"):
    _register(_which)
