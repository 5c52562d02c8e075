"""One entry point for every task: `sample_batch(cfg, key, batch_size, data)` dispatches on the config type."""

from __future__ import annotations

from jaxtyping import Array, PRNGKeyArray

from ._icl import ICLTaskConfig, sample_icl_batch
from ._induction import InductionTaskConfig, sample_induction_batch
from ._mixture import MixtureTaskConfig, sample_mixture_batch
from ._regression import RegressionTaskConfig, sample_regression_batch

TaskConfig = InductionTaskConfig | ICLTaskConfig | MixtureTaskConfig | RegressionTaskConfig


def sample_batch(
    cfg: TaskConfig, key: PRNGKeyArray, batch_size: int, data: Array | None = None, *, with_info: bool = False
) -> dict[str, Array]:
    """Draw one batch for `cfg`; pure and jittable with `cfg`, `batch_size` (and `with_info`) static.

    The trainer uses `key = jax.random.fold_in(train_key, step)`, so batch t depends only on t.
    """
    if isinstance(cfg, InductionTaskConfig):
        return sample_induction_batch(cfg, key, batch_size, with_info=with_info)
    if isinstance(cfg, ICLTaskConfig):
        return sample_icl_batch(cfg, key, batch_size, data, with_info=with_info)
    if isinstance(cfg, MixtureTaskConfig):
        return sample_mixture_batch(cfg, key, batch_size, data, with_info=with_info)
    if isinstance(cfg, RegressionTaskConfig):
        return sample_regression_batch(cfg, key, batch_size, data, with_info=with_info)
    raise ValueError(
        f"unknown task config type {type(cfg).__name__}; use InductionTaskConfig, ICLTaskConfig, MixtureTaskConfig "
        "or RegressionTaskConfig."
    )
