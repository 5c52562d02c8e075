"""The induction task's `Task`: next-token loss (masked to the repeats), eval on repeated tokens."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ..model import ModelConfig, next_token_correct, next_token_losses
from ._base import Task, register_task
from ._induction import InductionTaskConfig, repeated_tokens_probe


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
