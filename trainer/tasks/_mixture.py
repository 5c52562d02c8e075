"""Mixtures of task samplers: each sequence comes from one component, drawn by weight."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class MixtureTaskConfig:
    """Sample each sequence from `components[i]` with probability `weights[i] / sum(weights)`.

    Components must produce batches of identical keys, shapes and dtypes (e.g. ICL configs with
    the same context_len on the same data, or induction configs with the same seq_len).
    """

    components: tuple[Any, ...]
    weights: tuple[float, ...]

    def sample(self, key, batch_size: int, data=None, *, with_info: bool = False) -> dict:
        """One training batch (`trainer.tasks.sample_batch`); pure and jittable with the config static."""
        return sample_mixture_batch(self, key, batch_size, data, with_info=with_info)

    def __post_init__(self):
        object.__setattr__(self, "components", tuple(self.components))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.components:
            raise ValueError("a mixture needs at least one component config; pass components=(cfg, ...).")
        if len(self.weights) != len(self.components):
            raise ValueError(
                f"a mixture has {len(self.components)} components but {len(self.weights)} weights; "
                "give one weight per component."
            )
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {self.weights}.")


def sample_mixture_batch(
    cfg: MixtureTaskConfig, key: PRNGKeyArray, batch_size: int, data=None, *, with_info: bool = False
) -> dict[str, Array]:
    """Draw every component's batch with its own key and pick one per sequence.

    Component i uses `jax.random.split(key, n + 1)[i]`; the choice uses the last key. With
    `with_info`, also `component` (B,) int32.
    """
    keys = jax.random.split(key, len(cfg.components) + 1)
    draw = [functools.partial(c.sample, batch_size=batch_size, data=data, with_info=with_info) for c in cfg.components]
    shapes = [{k: (v.shape, v.dtype) for k, v in jax.eval_shape(f, keys[i]).items()} for i, f in enumerate(draw)]
    for i, got in enumerate(shapes[1:], start=1):
        if got != shapes[0]:
            raise ValueError(
                f"mixture component {i} gives batch {got} but component 0 gives {shapes[0]}; make the "
                "components' sequence shapes match."
            )
    ref = shapes[0]
    batches = [f(keys[i]) for i, f in enumerate(draw)]
    logits = jnp.log(jnp.asarray(cfg.weights, jnp.float32))
    which = jax.random.categorical(keys[-1], logits, shape=(batch_size,)).astype(jnp.int32)
    rows = jnp.arange(batch_size)
    out = {k: jnp.stack([b[k] for b in batches])[which, rows] for k in ref}
    if with_info:
        out["component"] = which
    return out
