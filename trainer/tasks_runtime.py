"""A run's task at run time: sampler, loss, evaluation sets and the model config it implies.

Tasks are a registry: a `Task` subclass per `task.kind` (`@register_task`), each owning its
config dataclass, the model sizes it fixes (vocabulary, exemplar size, number of labels, context
length), its training loss, model input, evaluation sets and metrics. `build_task(config)` looks
the kind up and builds it; nothing else branches on the kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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

__all__ = ["Task", "register_task", "build_task", "TASKS", "TASK_KINDS", "regression_metrics"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the trainer needs from a task; `data` is the exemplar array (ICL), the task pool
    (regression with finite task diversity) or None. Subclasses set `kind` and `config_class`."""

    cfg: Any
    model_config: ModelConfig
    data: Any = None
    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    @classmethod
    def build(cls, cfg: Any, model: dict, *, load_data: bool) -> "Task":
        """The task for its config `cfg`; `model` is the run's model section, updated in place with
        what the task fixes."""
        raise NotImplementedError

    def sample(self, key, batch_size: int) -> dict:
        return sample_batch(self.cfg, key, batch_size, self.data)

    def example_loss(self, logits, example: dict):
        """Loss of one example from its logits (the training objective)."""
        raise NotImplementedError

    def model_input(self, example: dict):
        raise NotImplementedError

    def n_positions(self, batch: dict) -> int:
        """Sequence length the model sees for a (batched) training batch."""
        raise NotImplementedError

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        """Fixed evaluation batches (deterministic in `eval_seed`)."""
        raise NotImplementedError

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
        """Per-example evaluation metrics for eval set `name`, named `eval_*`."""
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` the task of `task.kind = cls.kind`."""
    if not cls.kind or cls.kind in TASKS:
        raise ValueError(f"task kind {cls.kind!r} is empty or already registered")
    TASKS[cls.kind] = cls
    return cls


@register_task
@dataclasses.dataclass(frozen=True)
class InductionTask(Task):
    """Repeated random-token segments: next-token loss (masked), eval on repeated tokens."""

    kind: ClassVar[str] = "induction"
    config_class: ClassVar[type] = InductionTaskConfig

    @classmethod
    def build(cls, cfg: InductionTaskConfig, model: dict, *, load_data: bool) -> Task:
        model.update(head="lm", vocab_size=cfg.vocab_size, n_ctx=max(model["n_ctx"], cfg.seq_len))
        return cls(cfg, ModelConfig.from_dict(model))

    def example_loss(self, logits, example: dict):
        losses = next_token_losses(logits, example["tokens"])
        mask = example.get("loss_mask", jnp.ones_like(losses))
        return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    def model_input(self, example: dict):
        return example["tokens"]

    def n_positions(self, batch: dict) -> int:
        return batch["tokens"].shape[1]

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        T = (self.cfg.seq_len - 1) // 2
        tokens = repeated_tokens_probe(jax.random.key(eval_seed), size, T, self.cfg.vocab_size, self.cfg.bos_token)
        return {"repeated": {"tokens": tokens}}

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
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


@register_task
@dataclasses.dataclass(frozen=True)
class ICLTask(Task):
    """Bursty exemplar-label sequences: query cross-entropy, eval on the in-context / in-weights sets."""

    kind: ClassVar[str] = "icl"
    config_class: ClassVar[type] = ICLTaskConfig

    @classmethod
    def build(cls, cfg: ICLTaskConfig, model: dict, *, load_data: bool) -> Task:
        data = load_exemplars(cfg.data) if load_data else None
        dim = data.shape[-1] if data is not None else (cfg.data.dim if cfg.data.source == "synthetic" else model["d_in"])
        model.update(head="classifier", d_in=int(dim) or 1, n_labels=cfg.n_labels,
                     n_ctx=max(model["n_ctx"], 2 * cfg.context_len + 1))
        if data is not None:
            data = jnp.asarray(np.asarray(data, np.float32))
        return cls(cfg, ModelConfig.from_dict(model), data)

    def example_loss(self, logits, example: dict):
        return query_loss(logits, example["labels"][-1])

    def model_input(self, example: dict):
        return {"examples": example["examples"], "labels": example["labels"]}

    def n_positions(self, batch: dict) -> int:
        return 2 * batch["labels"].shape[1] - 1

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        return make_eval_sets(self.cfg, self.data, eval_seed, size)

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
        target = example["labels"][-1]
        return {f"eval_{name}_loss": query_loss(logits, target), f"eval_{name}_accuracy": query_correct(logits, target)}


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


TASK_KINDS = tuple(TASKS)


def build_task(config: dict, *, load_data: bool = True) -> Task:
    """The `Task` for a run config; with `load_data=False` the exemplar array is not materialised."""
    section = dict(config["task"])
    kind = section.pop("kind", None)
    if kind not in TASKS:
        raise ValueError(f"unknown task.kind {kind!r}; choose one of {', '.join(TASKS)}")
    task_cls = TASKS[kind]
    try:
        cfg = task_cls.config_class(**section)
    except TypeError as exc:
        raise ValueError(f"bad task config: {exc}") from None
    return task_cls.build(cfg, dict(config["model"]), load_data=load_data)
