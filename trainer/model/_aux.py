"""Full activation access: the `ModuleWithAux` base class and cache-aware assignment.

Every module returns a dict of all its intermediates from `call_with_all_aux`. A `cache` dict
of the same structure (missing entries ignored) replaces computed values, element-wise where
`cache_mask` is given; this is how ablations, clamps and patches are expressed, as data.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax.numpy as jnp

Cache = dict[str, Any]


def to_rank(v, ndim: int):
    """`v` with leading unit axes up to `ndim` dims: a bias or scale broadcast against activations
    explicitly, never by NumPy's implicit rank promotion (the tests run with it off)."""
    return v.reshape((1,) * (ndim - v.ndim) + tuple(v.shape))


class ModuleWithAux(eqx.Module):
    """An Equinox module whose forward returns every intermediate in a nested dict."""

    def call_with_all_aux(self, x, *, cache: Cache | None = None, cache_mask: Cache | None = None, key=None) -> dict:
        raise NotImplementedError

    def __call__(self, x, *, cache: Cache | None = None, cache_mask: Cache | None = None, key=None):
        return self.call_with_all_aux(x, cache=cache, cache_mask=cache_mask, key=key)["out"]


def make_cache_assign(r: dict, cache: Cache | None, cache_mask: Cache | None) -> Callable[[str, Any], Any]:
    """Return `assign(name, value)`: store `value` in `r[name]`, or the cached value if any.

    With `cache_mask[name]` given the replacement is element-wise: `where(mask, cached, value)`
    (the mask broadcasts against the value, so a `(H, 1, 1)` mask selects whole heads).
    """
    cache = cache or {}
    cache_mask = cache_mask or {}

    def assign(name: str, value):
        if name in cache and cache[name] is not None:
            cached = cache[name]
            mask = cache_mask.get(name)
            if mask is None:
                value = jnp.broadcast_to(jnp.asarray(cached, value.dtype), value.shape)
            else:
                value = jnp.where(mask, jnp.asarray(cached, value.dtype), value)
        r[name] = value
        return value

    return assign


def sub_cache(cache: Cache | None, name: str) -> Cache | None:
    """The part of a cache (or cache mask) that belongs to the submodule stored under `name`."""
    if not cache:
        return None
    return cache.get(name) or None


def layer_cache(cache: Cache | None, layer: int) -> Cache | None:
    """The cache entry for block `layer` from `cache["layer_outputs"]` (a list or an int-keyed dict)."""
    if not cache or "layer_outputs" not in cache:
        return None
    entries = cache["layer_outputs"]
    if isinstance(entries, dict):
        return entries.get(layer) or None
    return entries[layer] if layer < len(entries) and entries[layer] else None
