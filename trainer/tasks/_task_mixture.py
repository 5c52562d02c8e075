"""Mixtures from a config file: `task.kind = "mixture"` with component task sections and weights.

Each sequence comes from one component (`MixtureTaskConfig`); the components must be tasks of one
kind with matching sequence shapes and model sizes, so the first component's loss, model input,
evaluation sets and probes serve the whole mixture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from ._base import TASKS, Task, register_task, task_config
from ._mixture import MixtureTaskConfig

__all__ = ["MixtureTask", "mixture_config"]


def mixture_config(components: Any = (), weights: Any = ()) -> MixtureTaskConfig:
    """A `MixtureTaskConfig` from component task sections (dicts with their own `kind`)."""
    if not isinstance(components, (list, tuple)) or not all(isinstance(c, Mapping) for c in components):
        raise ValueError("task.components of a mixture must be a list of task sections, e.g. "
                         "[{kind: icl, p_bursty: 0.0}, {kind: icl, p_bursty: 1.0}]")
    kinds = {c.get("kind") for c in components}
    if "mixture" in kinds:
        raise ValueError("a mixture's components cannot be mixtures themselves; list their components instead")
    if len(kinds) > 1:
        raise ValueError(f"a mixture's components must be tasks of one kind (one loss and model input), got "
                         f"{', '.join(sorted(map(str, kinds)))}")
    cfgs = tuple(task_config({"task": dict(c)})[1] for c in components)
    return MixtureTaskConfig(components=cfgs, weights=tuple(weights))


def _component_task(cfg: Any) -> type[Task]:
    return next(t for t in TASKS.values() if isinstance(cfg, t.config_class))


@register_task
@dataclasses.dataclass(frozen=True)
class MixtureTask(Task):
    """A weighted mixture of one task kind's samplers; the first component's task does the rest."""

    kind: ClassVar[str] = "mixture"
    config_class: ClassVar[Any] = mixture_config
    eval_sets_are_probes: ClassVar[bool] = True
    first: Task | None = None

    @classmethod
    def probe_defaults(cls, cfg: MixtureTaskConfig) -> dict[str, str]:
        return _component_task(cfg.components[0]).probe_defaults(cfg.components[0])

    @classmethod
    def offered_probes(cls, cfg: MixtureTaskConfig) -> tuple[str, ...]:
        return _component_task(cfg.components[0]).offered_probes(cfg.components[0])

    @classmethod
    def build(cls, cfg: MixtureTaskConfig, model: dict, *, load_data: bool) -> Task:
        task_cls = _component_task(cfg.components[0])
        first = task_cls.build(cfg.components[0], dict(model), load_data=load_data)
        sized = first.model_config.to_dict()  # the others need no data of their own: the first's sizes them
        others = [task_cls.build(c, dict(sized), load_data=False) for c in cfg.components[1:]]
        if any(t.model_config != first.model_config for t in others):
            raise ValueError("a mixture's components imply different model sizes (vocabulary, exemplar size, labels or "
                             "context); give them the same")
        model.update(sized)
        return cls(cfg, first.model_config, first.data, first)

    def example_loss(self, logits, example: dict):
        return self.first.example_loss(logits, example)

    def model_input(self, example: dict):
        return self.first.model_input(example)

    def n_positions(self, batch: dict) -> int:
        return self.first.n_positions(batch)

    def eval_sets(self, eval_seed: int, size: int) -> dict[str, dict]:
        return self.first.eval_sets(eval_seed, size)

    def eval_metrics(self, name: str, logits, example: dict) -> dict[str, Any]:
        return self.first.eval_metrics(name, logits, example)
