"""A run's task at run time: sampler, loss, evaluation sets and the model config it implies.

`build_task(config)` turns the `task` section of a run config into a `Task`, and fills the
model sizes the task fixes (vocabulary, exemplar size, number of labels, context length).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .model import (
    ModelConfig,
    next_token_correct,
    next_token_losses,
    query_correct,
    query_loss,
    regression_losses,
    regression_predictions,
)
from .tasks import (
    ICLTaskConfig,
    InductionTaskConfig,
    RegressionTaskConfig,
    load_exemplars,
    make_eval_sets,
    regression_eval_sets,
    repeated_tokens_probe,
    sample_batch,
    task_pool,
)

TASK_KINDS = ("induction", "icl", "regression")


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the trainer needs from a task; `data` is the exemplar array (ICL), the task pool
    (regression with finite task diversity) or None."""

    kind: str
    cfg: Any
    model_config: ModelConfig
    data: Any = None

    def sample(self, key, batch_size: int) -> dict:
        return sample_batch(self.cfg, key, batch_size, self.data)

    def example_loss(self, logits, example: dict):
        """Loss of one example from its logits (the training objective)."""
        if self.kind == "induction":
            losses = next_token_losses(logits, example["tokens"])
            mask = example.get("loss_mask", jnp.ones_like(losses))
            return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        if self.kind == "regression":
            return regression_losses(logits, example["ys"]).mean()
        return query_loss(logits, example["labels"][-1])

    def model_input(self, example: dict):
        if self.kind == "regression":
            return {"xs": example["xs"], "ys": example["ys"]}
        return example["tokens"] if self.kind == "induction" else {"examples": example["examples"], "labels": example["labels"]}

    def n_positions(self, batch: dict) -> int:
        """Sequence length the model sees for a (batched) training batch."""
        if self.kind == "induction":
            return batch["tokens"].shape[1]
        if self.kind == "regression":
            return 2 * batch["ys"].shape[1] - 1
        return 2 * batch["labels"].shape[1] - 1

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        """Fixed evaluation batches (deterministic in `eval_seed`)."""
        if self.kind == "induction":
            T = (self.cfg.seq_len - 1) // 2
            tokens = repeated_tokens_probe(jax.random.key(eval_seed), size, T, self.cfg.vocab_size, self.cfg.bos_token)
            return {"repeated": {"tokens": tokens}}
        if self.kind == "regression":
            return {name: {k: jnp.asarray(v) for k, v in batch.items()}
                    for name, batch in regression_eval_sets(self.cfg, eval_seed, size).items()}
        return make_eval_sets(self.cfg, self.data, eval_seed, size)

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
        """Per-example evaluation metrics for eval set `name`."""
        if self.kind == "induction":
            tokens = example["tokens"]
            losses = next_token_losses(logits, tokens)
            correct = next_token_correct(logits, tokens)
            T = (tokens.shape[0] - 1) // 2
            return {
                "eval_loss": losses.mean(),
                "eval_accuracy": correct.mean(),
                "eval_repeat_loss": losses[T:].mean(),  # predictions of the second copy
                "eval_first_copy_loss": losses[:T].mean(),
            }
        if self.kind == "regression":
            return regression_metrics(name, logits, example)
        target = example["labels"][-1]
        return {f"eval_{name}_loss": query_loss(logits, target), f"eval_{name}_accuracy": query_correct(logits, target)}


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


def _induction_cfg(section: dict) -> InductionTaskConfig:
    return InductionTaskConfig(**section)


def _icl_cfg(section: dict) -> ICLTaskConfig:
    return ICLTaskConfig(**section)


def _regression_cfg(section: dict) -> RegressionTaskConfig:
    return RegressionTaskConfig(**section)


_BUILDERS: dict[str, Callable[[dict], Any]] = {"induction": _induction_cfg, "icl": _icl_cfg,
                                               "regression": _regression_cfg}


def build_task(config: dict, *, load_data: bool = True) -> Task:
    """The `Task` for a run config; with `load_data=False` the exemplar array is not materialised."""
    section = dict(config["task"])
    kind = section.pop("kind", None)
    if kind not in _BUILDERS:
        raise ValueError(f"unknown task.kind {kind!r}; choose one of {', '.join(TASK_KINDS)}")
    try:
        cfg = _BUILDERS[kind](section)
    except TypeError as exc:
        raise ValueError(f"bad task config: {exc}") from None
    model = dict(config["model"])
    if kind == "induction":
        model.update(head="lm", vocab_size=cfg.vocab_size, n_ctx=max(model["n_ctx"], cfg.seq_len))
        data = None
    elif kind == "regression":
        model.update(head="regression", d_in=cfg.n_dims + 1, n_ctx=max(model["n_ctx"], cfg.n_positions))
        pool = task_pool(cfg) if load_data else None
        data = None if pool is None else jnp.asarray(pool)
    else:
        data = load_exemplars(cfg.data) if load_data else None
        dim = data.shape[-1] if data is not None else (cfg.data.dim if cfg.data.source == "synthetic" else model["d_in"])
        model.update(head="classifier", d_in=int(dim) or 1, n_labels=cfg.n_labels,
                     n_ctx=max(model["n_ctx"], 2 * cfg.context_len + 1))
        if data is not None:
            data = jnp.asarray(np.asarray(data, np.float32))
    return Task(kind=kind, cfg=cfg, model_config=ModelConfig.from_dict(model), data=data)
