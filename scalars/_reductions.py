"""Means over leading (batch) axes written as a dot product.

On XLA's CPU backend (jax 0.10, YNNPACK fusions) `x.mean(0)` of a (16, 8, 129, 129) pattern
measured about 40x slower than the same mean as a vector-matrix product (20 ms vs 0.5 ms), and
it ran once per layer per checkpoint; the dot form is exact to float rounding everywhere.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["leading_mean"]


def leading_mean(x: Array, n_axes: int = 1) -> Array:
    """Mean of `x` over its first `n_axes` axes (shape x.shape[n_axes:])."""
    n = math.prod(x.shape[:n_axes])
    flat = x.reshape(n, -1)
    return (jnp.full((1, n), 1.0 / n, x.dtype) @ flat).reshape(x.shape[n_axes:])
