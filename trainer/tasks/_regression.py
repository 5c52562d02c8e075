"""In-context linear regression (Garg et al. 2022; Raventós et al. 2023; the devinterp/timaeus setting).

A sequence holds K pairs (x_k, y_k): x_k ~ N(0, I_D), y_k = w . x_k + eps_k with
eps_k ~ N(0, noise_var), and one task vector w per sequence. With `n_tasks = M` finite, w is
drawn uniformly from a fixed pool of M tasks (the pool is `N(0, I_D)` draws from `task_seed`,
see `task_pool`); with `n_tasks = None` ("infinity") every sequence gets a fresh w ~ N(0, I_D).
The model sees tokens `x_1, y_1, ..., x_K` (`trainer.model.regression_tokens`) and predicts
y_k at the x_k token; the loss is the mean squared error over the K predictions.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

INFINITE = ("inf", "infinity", "Infinity", "INF")


def _n_tasks(value) -> int | None:
    if value is None or (isinstance(value, str) and value in INFINITE):
        return None
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"task.n_tasks must be a positive integer or 'inf' (fresh Gaussian tasks), got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RegressionTaskConfig:
    """Task diversity M (`n_tasks`, None = infinity), input size D (`n_dims`), K pairs
    (`context_len`), label noise variance (`noise_var`) and the seed of the task pool."""

    n_dims: int = 4
    context_len: int = 16
    n_tasks: int | None = None
    noise_var: float = 0.125
    task_seed: int = 0

    def sample(self, key, batch_size: int, data=None, *, with_info: bool = False) -> dict:
        """One training batch (`trainer.tasks.sample_batch`); pure and jittable with the config static."""
        return sample_regression_batch(self, key, batch_size, data, with_info=with_info)

    def __post_init__(self):
        object.__setattr__(self, "n_tasks", _n_tasks(self.n_tasks))
        for name in ("n_dims", "context_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.noise_var, (int, float)) or isinstance(self.noise_var, bool) or self.noise_var < 0:
            raise ValueError(f"task.noise_var must be a non-negative number, got {self.noise_var!r}")

    @property
    def n_positions(self) -> int:
        """Tokens the model sees: 2K - 1 (the last y is never fed in)."""
        return 2 * self.context_len - 1


@functools.lru_cache(maxsize=8)
def _pool(n_tasks: int, n_dims: int, task_seed: int) -> np.ndarray:
    return np.random.default_rng(task_seed).standard_normal((n_tasks, n_dims)).astype(np.float32)


def task_pool(cfg: RegressionTaskConfig) -> np.ndarray | None:
    """The M training task vectors (M, D) float32, or None for infinite task diversity."""
    return None if cfg.n_tasks is None else _pool(cfg.n_tasks, cfg.n_dims, cfg.task_seed)


def sample_regression_batch(
    cfg: RegressionTaskConfig,
    key: PRNGKeyArray,
    batch_size: int,
    data: Float[Array, "M D"] | None = None,
    *,
    with_info: bool = False,
) -> dict[str, Array]:
    """`xs` (B, K, D) and `ys` (B, K) float32; with `with_info` also `ws` (B, D) and `task_index`
    (B,) int32 (-1 for fresh Gaussian tasks). `data` is the task pool (default `task_pool(cfg)`)."""
    k_x, k_w, k_n = jax.random.split(key, 3)
    xs = jax.random.normal(k_x, (batch_size, cfg.context_len, cfg.n_dims), jnp.float32)
    if cfg.n_tasks is None:
        ws = jax.random.normal(k_w, (batch_size, cfg.n_dims), jnp.float32)
        index = jnp.full((batch_size,), -1, jnp.int32)
    else:
        pool = jnp.asarray(task_pool(cfg) if data is None else data, jnp.float32)
        index = jax.random.randint(k_w, (batch_size,), 0, pool.shape[0], jnp.int32)
        ws = pool[index]
    noise = math.sqrt(cfg.noise_var) * jax.random.normal(k_n, (batch_size, cfg.context_len), jnp.float32)
    ys = jnp.einsum("bkd,bd->bk", xs, ws) + noise
    out = {"xs": xs, "ys": ys}
    if with_info:
        out.update(ws=ws, task_index=index)
    return out


REGRESSION_SETS = ("gauss", "pool")


def regression_eval_batch(cfg: RegressionTaskConfig, eval_seed: int, n: int, name: str) -> dict[str, np.ndarray]:
    """`n` sequences of eval set `name` ("gauss": fresh Gaussian tasks; "pool": the training task
    distribution) with `xs`, `ys` and the baselines' predictions `ridge`, `dmmse` (B, K) float32;
    the key is `fold_in(PRNGKey(eval_seed), crc32(name))`."""
    import zlib

    from ._regression_baselines import bayes_predictions

    if name not in REGRESSION_SETS:
        raise ValueError(f"unknown regression eval set {name!r}; choose one of {', '.join(REGRESSION_SETS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of sequences, got {n!r}")
    pool = task_pool(cfg)
    c = dataclasses.replace(cfg, n_tasks=None) if name == "gauss" else cfg
    key = jax.random.fold_in(jax.random.PRNGKey(eval_seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    batch = {k: np.asarray(v) for k, v in sample_regression_batch(c, key, n, pool).items()}
    batch.update(bayes_predictions(batch["xs"], batch["ys"], pool, cfg.noise_var))
    return batch


def regression_eval_sets(cfg: RegressionTaskConfig, eval_seed: int, n: int) -> dict[str, dict[str, np.ndarray]]:
    """The training-time eval sets: `gauss` (fresh Gaussian tasks: general in-context regression)
    and, for finite M, `pool` (tasks from the training pool), each from `regression_eval_batch`."""
    names = ("gauss",) if cfg.n_tasks is None else REGRESSION_SETS
    return {name: regression_eval_batch(cfg, eval_seed, n, name) for name in names}
