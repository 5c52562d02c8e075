"""One entry point for every task: `sample_batch(cfg, key, batch_size, data)` calls the config's sampler."""

from __future__ import annotations

from typing import Any, Protocol

from jaxtyping import Array, PRNGKeyArray


class TaskConfig(Protocol):
    """A task's config dataclass: frozen (hashable, a static jit argument) with a pure sampler."""

    def sample(self, key: PRNGKeyArray, batch_size: int, data: Any = None, *, with_info: bool = False) -> dict: ...


def sample_batch(
    cfg: TaskConfig, key: PRNGKeyArray, batch_size: int, data: Array | None = None, *, with_info: bool = False
) -> dict[str, Array]:
    """Draw one batch for `cfg`; pure and jittable with `cfg`, `batch_size` (and `with_info`) static.

    The trainer uses `key = jax.random.fold_in(train_key, step)`, so batch t depends only on t.
    """
    sample = getattr(cfg, "sample", None)
    if not callable(sample):
        raise ValueError(f"unknown task config type {type(cfg).__name__}: it has no sample(key, batch_size, data) "
                         "method; pass a task's config dataclass (InductionTaskConfig, ICLTaskConfig, ...)")
    return sample(key, batch_size, data, with_info=with_info)
