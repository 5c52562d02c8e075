"""Built-in weight-based types: Q/K/V composition scores, no probe needed (docs/definitions.md).

Two definitions, both with the per-head layout `W_Q[h], W_K[h], W_V[h]: (d, e)`, `W_O[h]: (e, d)`,
biases, LayerNorm and rotary embeddings ignored. Entry [l, h, s, g] is source head (s, g) into
destination head (l, h); NaN where s >= l (TransformerLens stores 0 there); 0 where a norm is 0.

- `composition_q/k/v` (Elhage et al. 2021; TransformerLens `all_composition_scores`): the full
  circuits `OV = W_V W_O` and `QK = W_Q W_K^T` (d x d),
  `||OV^src R^dst||_F / (||OV^src||_F ||R^dst||_F)` with `R = QK`, `QK^T` or `OV`.
- `composition_q/k/v_weights`: the head matrices alone,
  `||W_O^src W_X^dst||_F / (||W_O^src||_F ||W_X^dst||_F)` with `X = Q, K, V` (version 1 of
  `composition_q/k/v`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..registry import register

__all__ = ["composition_scores", "weight_composition_scores", "full_circuit_composition_scores"]

PAIR_DIMS = ("layer", "head", "src_layer", "src_head")
HIGHEST = jax.lax.Precision.HIGHEST


def _ratio(num: Array, den: Array) -> Array:
    """num / den, 0 where den is 0 (a dead head composes with nothing)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _pair_table(model, pair_fn) -> Float[Array, "layer head src_layer src_head"]:
    """`pair_fn(src_layer, layer) -> (H, G)` at [layer, :, src_layer, :] for src_layer < layer; NaN elsewhere."""
    blocks = model.blocks
    n_layers, n_heads = len(blocks), blocks[0].attn.n_heads
    out = jnp.full((n_layers, n_heads, n_layers, n_heads), jnp.nan, jnp.float32)
    for layer in range(1, n_layers):
        for src in range(layer):
            out = out.at[layer, :, src, :].set(pair_fn(src, layer))
    return out


def weight_composition_scores(model, which: str) -> Float[Array, "layer head src_layer src_head"]:
    """`||W_O^src W_X^dst||_F / (||W_O^src||_F ||W_X^dst||_F)`, X = `which` (q, k or v): head matrices only."""

    def pair(src: int, layer: int) -> Array:
        W_X = model.blocks[layer].attn.head_weight(which)  # (H, d, e): grouped-query K/V repeated per query head
        W_O = model.blocks[src].attn.W_O  # (G, e, d)
        prod = jnp.einsum("ged,hdf->hgef", W_O, W_X, precision=HIGHEST)
        num = jnp.sqrt((prod**2).sum((2, 3)))  # (H, G)
        norm_x, norm_o = jnp.sqrt((W_X**2).sum((1, 2))), jnp.sqrt((W_O**2).sum((1, 2)))
        return _ratio(num, norm_x[:, None] * norm_o[None, :])

    return _pair_table(model, pair)


def _factors(attn, which: str) -> tuple[Array, Array]:
    """(A, B) with the head's d x d circuit = A @ B: OV = W_V W_O, QK = W_Q W_K^T, QK^T = W_K W_Q^T."""
    W_K, W_V = attn.head_weight("k"), attn.head_weight("v")  # per query head (grouped-query attention)
    return {"ov": (W_V, attn.W_O), "qk": (attn.W_Q, jnp.swapaxes(W_K, 1, 2)),
            "qk_t": (W_K, jnp.swapaxes(attn.W_Q, 1, 2))}[which]


def _reduce(A: Float[Array, "H d e"], B: Float[Array, "H e d"]) -> tuple[Array, Array]:
    """(R_A, R_B) of the QR factorisations A = Q_A R_A and B^T = Q_B R_B: orthonormal Q's keep
    Frobenius norms, so ||X A B Y||_F = ||X' R_A ... R_B^T Y'|| needs only e x e matrices."""
    return jnp.linalg.qr(A, mode="r"), jnp.linalg.qr(jnp.swapaxes(B, 1, 2), mode="r")


RIGHT = {"q": "qk", "k": "qk_t", "v": "ov"}  # the destination circuit each composition reads


def full_circuit_composition_scores(model, which: str) -> Float[Array, "layer head src_layer src_head"]:
    """`||OV^src R^dst||_F / (||OV^src||_F ||R^dst||_F)`, R = QK (q), QK^T (k) or OV (v) of the dst head.

    With OV^src = A1 B1 and R^dst = A2 B2 (thin factors, d x e and e x d) and QR factors
    A = Q R_A, B^T = Q' R_B, every Frobenius norm is one of e x e matrices:
    ||A1 B1 A2 B2|| = ||R_A1 (B1 A2) R_B2^T||, ||A B|| = ||R_A R_B^T||. Equal to the d x d products
    (tests/scalars/types/test_definitions.py) at a fraction of their cost.
    """

    def reduced(layer: int, kind: str) -> tuple[Array, Array, Array, Array, Array]:
        """The circuit's factors A, B, their QR factors R_A, R_B and its Frobenius norm (H,)."""
        A, B = _factors(model.blocks[layer].attn, kind)
        R_A, R_B = _reduce(A, B)
        norm = jnp.sqrt((jnp.einsum("hij,hkj->hik", R_A, R_B, precision=HIGHEST) ** 2).sum((1, 2)))
        return A, B, R_A, R_B, norm

    def pair(src: int, layer: int) -> Array:
        _, B1, R_A1, _, norm_src = reduced(src, "ov")  # (G, ...)
        A2, _, _, R_B2, norm_dst = reduced(layer, RIGHT[which])  # (H, ...)
        middle = jnp.einsum("ged,hdf->hgef", B1, A2, precision=HIGHEST)  # B1^src A2^dst: (H, G, e, e)
        core = jnp.einsum("gij,hgjk,hlk->hgil", R_A1, middle, R_B2, precision=HIGHEST)
        num = jnp.sqrt((core**2).sum((2, 3)))  # (H, G)
        return _ratio(num, norm_dst[:, None] * norm_src[None, :])

    return _pair_table(model, pair)


DEFINITIONS = {"full_circuit": full_circuit_composition_scores, "weights": weight_composition_scores}


def composition_scores(
    model, which: str, definition: str = "full_circuit"
) -> Float[Array, "layer head src_layer src_head"]:
    """Composition of every earlier head's output into `which` (q, k or v) of every head."""
    return DEFINITIONS[definition](model, which)


def _register(which: str) -> None:
    X = which.upper()
    right = {"q": "QK", "k": "QK^T", "v": "OV"}[which]

    @register(f"composition_{which}", dims=PAIR_DIMS, probe=None, units="ratio of Frobenius norms", version=2,
              description=f"{X}-composition of src head into (layer, head), full circuits (Elhage et al. 2021, "
                          f"TransformerLens all_composition_scores('{X}')): ||OV^src {right}^dst||_F / "
                          f"(||OV^src||_F ||{right}^dst||_F), OV = W_V W_O, QK = W_Q W_K^T; NaN where "
                          "src_layer >= layer (TransformerLens: 0)")
    def composition(model, probe, clean, ctx):
        return full_circuit_composition_scores(model, which)

    @register(f"composition_{which}_weights", dims=PAIR_DIMS, probe=None, units="ratio of Frobenius norms",
              description=f"{X}-composition of src head into (layer, head) from the head matrices alone (not the "
                          f"full circuits of composition_{which}): ||W_O^src W_{X}^dst||_F / "
                          f"(||W_O^src||_F ||W_{X}^dst||_F); NaN where src_layer >= layer")
    def composition_weights(model, probe, clean, ctx):
        return weight_composition_scores(model, which)

    composition.__name__ = f"composition_{which}"
    composition_weights.__name__ = f"composition_{which}_weights"


for _which in ("q", "k", "v"):
    _register(_which)
