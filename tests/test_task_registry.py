"""Tasks are a registry: a task defined in one place (a config dataclass and a Task subclass)
trains end to end, logs eval_* metrics and gets the model sizes it fixes; unknown kinds are named."""

import copy
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import pytest

import store
from trainer.config import resolve_config
from trainer.model import ModelConfig, next_token_losses
from trainer.tasks_runtime import TASKS, Task, build_task, register_task
from trainer.train import train


@dataclasses.dataclass(frozen=True)
class ConstantTokensConfig:
    vocab_size: int = 8
    seq_len: int = 6


@dataclasses.dataclass(frozen=True)
class ConstantTokensTask(Task):
    """Every sequence repeats one random token: after the first position the next token is known."""

    kind: ClassVar[str] = "constant_tokens"
    config_class: ClassVar[type] = ConstantTokensConfig

    @classmethod
    def build(cls, cfg, model, *, load_data):
        model.update(head="lm", vocab_size=cfg.vocab_size, n_ctx=max(model["n_ctx"], cfg.seq_len))
        return cls(cfg, ModelConfig.from_dict(model))

    def sample(self, key, batch_size):
        token = jax.random.randint(key, (batch_size, 1), 0, self.cfg.vocab_size)
        return {"tokens": jnp.broadcast_to(token, (batch_size, self.cfg.seq_len)).astype(jnp.int32)}

    def example_loss(self, logits, example):
        return next_token_losses(logits, example["tokens"]).mean()

    def model_input(self, example):
        return example["tokens"]

    def n_positions(self, batch):
        return batch["tokens"].shape[1]

    def eval_sets(self, eval_seed, size):
        return {"constant": self.sample(jax.random.key(eval_seed), size)}

    def eval_metrics(self, name, logits, example):
        return {f"eval_{name}_loss": next_token_losses(logits, example["tokens"])[1:].mean()}


@pytest.fixture
def registered():
    register_task(ConstantTokensTask)
    yield
    del TASKS["constant_tokens"]


def test_a_task_defined_in_one_place_trains_end_to_end(registered, tmp_path):
    config = copy.deepcopy(resolve_config("induction-tiny", None, ["train.steps=40", "train.eval_every=20",
                                                                    "checkpoints.schedule=every:20"]))
    config["task"] = {"kind": "constant_tokens", "vocab_size": 8, "seq_len": 6}
    task = build_task(config)
    assert isinstance(task, ConstantTokensTask) and task.model_config.vocab_size == 8
    train(config, tmp_path / "run", progress=False)
    assert store.open_archive(tmp_path / "run").steps.tolist() == [0, 20, 40]
    loss = store.open_metrics(tmp_path / "run").eval_constant_loss.dropna("step").values
    assert loss[-1] < 0.5 * loss[0]  # the known next token is learned


def test_unknown_kinds_and_double_registration_are_refused():
    with pytest.raises(ValueError, match="unknown task.kind 'vision'; choose one of induction, icl, regression"):
        build_task({"task": {"kind": "vision"}, "model": {}})
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["icl"])
