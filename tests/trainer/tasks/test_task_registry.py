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
from trainer.tasks import TASKS, Task, build_task, register_task
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


@pytest.mark.slow
def test_a_task_defined_in_one_place_trains_end_to_end(registered, tmp_path):
    config = copy.deepcopy(resolve_config("induction-tiny", None, ["train.steps=40", "train.eval_every=20",
                                                                    "checkpoints.schedule=every:20"]))
    config["task"] = {"kind": "constant_tokens", "vocab_size": 8, "seq_len": 6}
    task = build_task(config)
    assert isinstance(task, ConstantTokensTask) and task.model_config.vocab_size == 8
    train(config, tmp_path / "run")
    assert store.open_archive(tmp_path / "run").steps.tolist() == [0, 20, 40]
    loss = store.open_metrics(tmp_path / "run").eval_constant_loss.dropna("step").values
    assert loss[-1] < 0.5 * loss[0]  # the known next token is learned


def test_unknown_kinds_and_double_registration_are_refused():
    with pytest.raises(ValueError, match="unknown task.kind 'vision'; choose one of induction, icl, regression"):
        build_task({"task": {"kind": "vision"}, "model": {}})
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["icl"])


def _tiny_induction(**task) -> dict:
    """An induction-tiny config of 20 steps whose task section is `task`."""
    config = copy.deepcopy(resolve_config("induction-tiny", None, TINY_TRAIN))
    config["task"] = task
    return config


TINY_TRAIN = ["model.d_model=32", "model.n_heads=2", "train.steps=20", "train.eval_every=10", "train.eval_size=8",
              "train.batch_size=8", "checkpoints.schedule=every:10"]
SHORT = {"kind": "induction", "seq_len": 24, "vocab_size": 16, "segment_len_min": 4, "segment_len_max": 4}
LONG = {**SHORT, "segment_len_min": 8, "segment_len_max": 8}


def test_a_mixture_from_a_config_file_samples_its_components_by_weight_and_trains(tmp_path):
    """task.kind = "mixture" in a config file: the preset's task section is replaced, the built task
    samples exactly `sample_mixture_batch` of the component configs, about 3/4 of the sequences
    come from the weight-3 component, and the run trains with the component's eval metrics."""
    import json

    import numpy as np

    from trainer.tasks import InductionTaskConfig, MixtureTask, sample_mixture_batch
    from trainer.tasks._mixture import MixtureTaskConfig

    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"preset": "induction-tiny",
                                "task": {"kind": "mixture", "components": [SHORT, LONG], "weights": [1, 3]}}))
    config = resolve_config(None, str(path), TINY_TRAIN)
    task = build_task(config)
    assert isinstance(task, MixtureTask) and task.model_config.vocab_size == 16
    direct = MixtureTaskConfig(components=tuple(InductionTaskConfig(**{k: v for k, v in c.items() if k != "kind"})
                                                for c in (SHORT, LONG)), weights=(1, 3))
    key = jax.random.key(3)
    got = task.cfg.sample(key, 4000, with_info=True)
    want = sample_mixture_batch(direct, key, 4000, with_info=True)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    long_share = float((np.asarray(got["segment_len"]) == 8).mean())
    assert 0.72 < long_share < 0.78, long_share
    assert np.array_equal(np.asarray(got["segment_len"]) == 8, np.asarray(got["component"]) == 1)
    train(config, tmp_path / "run")
    assert store.read_run_json(tmp_path / "run")["config"]["task"]["kind"] == "mixture"
    assert np.isfinite(store.open_metrics(tmp_path / "run").eval_repeat_loss.dropna("step").values).all()


@pytest.mark.parametrize("components, message", [
    ([SHORT, {"kind": "icl"}], "must be tasks of one kind"),
    ([SHORT, {**SHORT, "seq_len": 32}], "make the components' sequence shapes match"),
    ([SHORT, {**SHORT, "vocab_size": 32}], "imply different model sizes"),
    ([SHORT], "1 components but 2 weights"),
    ("induction", "must be a list of task sections"),
])
def test_bad_mixtures_are_refused_in_one_sentence(components, message):
    config = _tiny_induction(kind="mixture", components=components, weights=[1, 1])
    with pytest.raises(ValueError, match=message):
        task = build_task(config, load_data=False)
        task.sample(jax.random.key(0), 2)


def _plugin_source() -> str:
    """A plugin file registering this module's task under another kind (the same code, as a user writes it)."""
    import inspect

    header = ("import dataclasses\nfrom typing import ClassVar\n\nimport jax\nimport jax.numpy as jnp\n\n"
              "from trainer.model import ModelConfig, next_token_losses\nfrom trainer.tasks import Task, register_task\n\n\n")
    task = inspect.getsource(ConstantTokensTask).replace('"constant_tokens"', '"plugin_constant_tokens"')
    return header + inspect.getsource(ConstantTokensConfig) + "\n\n" + task + "\n\nregister_task(ConstantTokensTask)\n"


def test_scalars_train_loads_a_task_plugin_and_trains_its_kind_from_a_config_file(tmp_path):
    """`scalars train --plugin task.py --config cfg.json`: the plugin's task kind (unknown without
    the plugin, refused in one sentence) trains end to end, and its known next token is learned."""
    import json
    import subprocess
    import sys

    (tmp_path / "task.py").write_text(_plugin_source())
    (tmp_path / "cfg.json").write_text(json.dumps({
        "preset": "induction-tiny", "task": {"kind": "plugin_constant_tokens", "vocab_size": 8, "seq_len": 6},
        "train": {"steps": 40, "eval_every": 20, "eval_size": 16}, "checkpoints": {"schedule": "every:20"}}))

    def train_cli(*extra):
        return subprocess.run([sys.executable, "-m", "cli.app", "train", "--config", str(tmp_path / "cfg.json"),
                               "--out", str(tmp_path / "run"), "-q", *extra], capture_output=True, text=True)

    refused = train_cli()
    assert refused.returncode != 0 and "unknown task.kind 'plugin_constant_tokens'" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "run").exists()
    done = train_cli("--plugin", str(tmp_path / "task.py"))
    assert done.returncode == 0, done.stderr
    assert store.open_archive(tmp_path / "run").steps.tolist() == [0, 20, 40]
    loss = store.open_metrics(tmp_path / "run").eval_constant_loss.dropna("step").values
    assert loss[-1] < 0.5 * loss[0]
