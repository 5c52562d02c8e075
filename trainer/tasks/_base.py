"""The task registry: a `Task` subclass per `task.kind` (`@register_task`) and the functions that
look a run config's task up.

Each task owns its config dataclass, the model sizes it fixes (vocabulary, exemplar size, number
of labels, context length), its training loss, model input, evaluation sets and metrics, and the
probes its runs read; `build_task(config)` looks the kind up and builds it, and nothing else
branches on the kind. The built-in tasks register themselves in the modules beside this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..model import ModelConfig
from ._sample import sample_batch

__all__ = ["Task", "register_task", "build_task", "task_config", "task_probe_defaults", "task_offers_eval_set_probes",
           "TASKS"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the trainer needs from a task; `data` is the exemplar array (ICL), the task pool
    (regression with finite task diversity) or None. Subclasses set `kind` and `config_class`."""

    cfg: Any
    model_config: ModelConfig
    data: Any = None
    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    eval_sets_are_probes: ClassVar[bool] = False  # its evaluation sets can be asked for as probes, by name
    # config keys of earlier versions -> a function of the old value giving the keys it became, so that
    # the stored config of an earlier run still reads
    renamed_keys: ClassVar[Mapping[str, Callable[[Any], dict]]] = {}

    @classmethod
    def probe_defaults(cls, cfg: Any) -> dict[str, str]:
        """The probes this task's runs read for the probe roles (`default`, `default_train`,
        `default_pair`) where they differ from the model head's defaults."""
        return {}

    @classmethod
    def offered_probes(cls, cfg: Any) -> tuple[str, ...]:
        """Names of registered probes that only runs of this task (with this config) can build."""
        return ()

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


def task_config(config: Mapping[str, Any]) -> tuple[type[Task], Any]:
    """The task class and its config dataclass for a run config's `task` section."""
    section = dict(config["task"])
    kind = section.pop("kind", None)
    if kind not in TASKS:
        raise ValueError(f"unknown task.kind {kind!r}; choose one of {', '.join(TASKS)}")
    task_cls = TASKS[kind]
    for old, translate in task_cls.renamed_keys.items():
        if old in section:
            section = {**translate(section.pop(old)), **section}
    try:
        return task_cls, task_cls.config_class(**section)
    except TypeError as exc:
        raise ValueError(f"bad task config: {exc}") from None


def build_task(config: Mapping[str, Any], *, load_data: bool = True) -> Task:
    """The `Task` for a run config; with `load_data=False` the exemplar array is not materialised."""
    task_cls, cfg = task_config(config)
    return task_cls.build(cfg, dict(config["model"]), load_data=load_data)


def task_probe_defaults(config: Mapping[str, Any]) -> dict[str, str]:
    """`Task.probe_defaults` of a run config's task; empty for a run without a (known) task."""
    if "task" not in config:
        return {}
    try:
        task_cls, cfg = task_config(config)
    except ValueError:
        return {}
    return task_cls.probe_defaults(cfg)


def task_offers_eval_set_probes(config: Mapping[str, Any]) -> bool:
    """Whether a run config's task lets its evaluation sets be asked for as probes by name."""
    kind = (config.get("task") or {}).get("kind")
    return kind in TASKS and TASKS[kind].eval_sets_are_probes
