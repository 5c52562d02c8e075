"""The in-context regression task's `Task`: squared error of every prediction, eval against the baselines."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from ..model import ModelConfig, regression_losses, regression_predictions
from ._base import Task, register_task
from ._regression import RegressionTaskConfig, regression_eval_sets, task_pool


@register_task
@dataclasses.dataclass(frozen=True)
class RegressionTask(Task):
    """In-context linear regression: squared error of every prediction, eval against the baselines."""

    kind: ClassVar[str] = "regression"
    config_class: ClassVar[type] = RegressionTaskConfig

    @classmethod
    def build(cls, cfg: RegressionTaskConfig, model: dict, *, load_data: bool) -> Task:
        model.update(head="regression", d_in=cfg.n_dims + 1, n_ctx=max(model["n_ctx"], cfg.n_positions))
        pool = task_pool(cfg) if load_data else None
        return cls(cfg, ModelConfig.from_dict(model), None if pool is None else jnp.asarray(pool))

    def example_loss(self, logits, example: dict):
        return regression_losses(logits, example["ys"]).mean()

    def model_input(self, example: dict):
        return {"xs": example["xs"], "ys": example["ys"]}

    def n_positions(self, batch: dict) -> int:
        return 2 * batch["ys"].shape[1] - 1

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        return {name: {k: jnp.asarray(v) for k, v in batch.items()}
                for name, batch in regression_eval_sets(self.cfg, eval_seed, size).items()}

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
        return regression_metrics(name, logits, example)


def regression_metrics(name: str, logits, example: dict) -> dict[str, Any]:
    """Eval set `name` (metrics `eval_{name}_*`): mean loss, loss at each context position k
    (`_loss_pos{k:02d}`), the mean squared distance of the predictions to the ridge and dMMSE
    baselines, and the baselines' losses."""
    pred, ys = regression_predictions(logits), example["ys"]
    sq = (pred - ys) ** 2
    out = {f"eval_{name}_loss": sq.mean()}
    out.update({f"eval_{name}_loss_pos{k:02d}": sq[k] for k in range(sq.shape[0])})
    for base in ("ridge", "dmmse"):
        out[f"eval_{name}_delta_{base}"] = ((pred - example[base]) ** 2).mean()
        out[f"eval_{name}_{base}_loss"] = ((example[base] - ys) ** 2).mean()
    return out
