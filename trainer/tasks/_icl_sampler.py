"""The one sequence sampler behind ICL training and evals, driven by a static `SeqSpec`.

A sequence is `context_len` exemplar-label pairs then a query exemplar; item P-1 is the query
and its label is the target. Pure JAX: a function of (spec, data, key), jittable with spec static.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._icl_labels import class_label_map


@dataclasses.dataclass(frozen=True)
class SeqSpec:
    """Everything that shapes one family of sequences (derived from a task config, never user-facing).

    Classes come from the contiguous block `[class_lo, class_lo + class_n)` with Zipf weights
    `(rank + 1) ** -zipf_alpha`; exemplar indices uniformly from `[ex_lo, ex_lo + ex_n)`.
    With probability `p_bursty` the context holds the query class `burstiness` times (and a
    distractor class `burstiness` times if `distractor`), the rest drawn from the weights
    without those two, shuffled; otherwise every context class is drawn i.i.d. from the
    weights (without the query class if `exclude_query`). Labels: `"none"` the fixed map,
    `"perm"` the fixed map composed with a per-sequence random permutation of the labels,
    `"pairs"` a per-sequence pair (a, b) from `label_pairs` in random order, a for items of
    the query class and b for the rest.
    """

    context_len: int
    n_labels: int
    class_lo: int
    class_n: int
    ex_lo: int
    ex_n: int
    zipf_alpha: float = 0.0
    p_bursty: float = 1.0
    burstiness: int = 1
    distractor: bool = True
    exclude_query: bool = False
    relabel: Literal["none", "perm", "pairs"] = "none"
    label_pairs: tuple[tuple[int, int], ...] = ()
    noise_scale: float = 0.0
    label_map_seed: int | None = 0


def zipf_probs(n: int, alpha: float) -> np.ndarray:
    """Class probabilities proportional to `(rank + 1) ** -alpha`, rank 0..n-1 (float64, sums to 1)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -float(alpha)
    return w / w.sum()


def min_pool_size(spec: SeqSpec) -> int:
    """Fewest distinct classes the spec's class block must hold."""
    need = 1
    if spec.p_bursty > 0:
        rest = spec.context_len - spec.burstiness * (2 if spec.distractor else 1)
        need = 1 + int(spec.distractor) + int(rest > 0)
    if spec.p_bursty < 1 and spec.exclude_query:
        need = max(need, 2)
    return need


def _icdf(u: Array, weights: Array) -> Array:
    """Inverse-CDF draw(s) of an index with probability proportional to `weights` (zeros never drawn)."""
    cdf = jnp.cumsum(weights)
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all")
    last = weights.shape[0] - 1 - jnp.argmax(weights[::-1] > 0)
    return jnp.minimum(idx, last).astype(jnp.int32)


def _one(spec: SeqSpec, data, class_labels, probs, pairs, key: PRNGKeyArray) -> dict[str, Array]:
    # One uniform draw per sequence, carved into named pieces: far cheaper to compile than one
    # jax.random call per piece.
    K, m = spec.context_len, spec.burstiness
    n_rest = K - m * (2 if spec.distractor else 1)
    n_lab = spec.n_labels if spec.relabel == "perm" else 2
    sizes = {"q": 1, "bursty": 1, "d": 1, "rest": n_rest, "shuffle": K, "rand": K, "ex": K + 1, "lab": n_lab}
    u_all = jax.random.uniform(key, (sum(sizes.values()),))
    u, at = {}, 0
    for name, size in sizes.items():
        u[name], at = u_all[at : at + size], at + size
    q = _icdf(u["q"][0], probs)
    bursty = u["bursty"][0] < spec.p_bursty
    no_q = probs.at[q].set(0.0)
    parts = [jnp.full((m,), q, jnp.int32)]
    excl = no_q
    if spec.distractor:
        d = _icdf(u["d"][0], no_q)
        parts.append(jnp.full((m,), d, jnp.int32))
        excl = no_q.at[d].set(0.0)
    if n_rest > 0:
        parts.append(_icdf(u["rest"], excl))
    burst_ctx = jnp.concatenate(parts)[jnp.argsort(u["shuffle"])]
    rand_ctx = _icdf(u["rand"], no_q if spec.exclude_query else probs)
    ctx = jnp.where(bursty, burst_ctx, rand_ctx)
    classes = jnp.concatenate([ctx, q[None]]) + spec.class_lo
    ex = spec.ex_lo + jnp.minimum(jnp.floor(u["ex"] * spec.ex_n).astype(jnp.int32), spec.ex_n - 1)
    x = data[classes, ex]
    if spec.noise_scale > 0:
        x = x + spec.noise_scale * jax.random.normal(jax.random.fold_in(key, 1), x.shape, x.dtype)
    base = class_labels[classes]
    if spec.relabel == "none":
        labels = base
    elif spec.relabel == "perm":
        labels = jnp.argsort(u["lab"]).astype(jnp.int32)[base]
    else:
        n_pairs = pairs.shape[0]
        pair = pairs[jnp.minimum(jnp.floor(u["lab"][0] * n_pairs).astype(jnp.int32), n_pairs - 1)]
        flip = u["lab"][1] < 0.5
        a = jnp.where(flip, pair[1], pair[0])
        b = jnp.where(flip, pair[0], pair[1])
        labels = jnp.where(classes == classes[K], a, b)
    return {"examples": x, "labels": labels.astype(jnp.int32), "classes": classes, "bursty": bursty}


@functools.partial(jax.jit, static_argnames=("spec", "batch_size", "with_info"))
def sample_spec(
    spec: SeqSpec, key: PRNGKeyArray, batch_size: int, data: Float[Array, "cls ex dim"], *, with_info: bool = False
) -> dict[str, Array]:
    """Draw `batch_size` sequences (jitted; spec static): `examples` (B, P, dim) float32, `labels` (B, P) int32.

    With `with_info`, also `classes` (B, P) int32 (global class ids) and `bursty` (B,) bool.
    """
    data = jnp.asarray(data, jnp.float32)
    class_labels = jnp.asarray(class_label_map(data.shape[0], spec.n_labels, spec.label_map_seed))
    probs = jnp.asarray(zipf_probs(spec.class_n, spec.zipf_alpha), jnp.float32)
    pairs = jnp.asarray(np.array(spec.label_pairs or ((0, 1),), dtype=np.int32))
    fn = functools.partial(_one, spec, data, class_labels, probs, pairs)
    out = jax.vmap(fn)(jax.random.split(key, batch_size))
    if not with_info:
        out = {"examples": out["examples"], "labels": out["labels"]}
    return out
