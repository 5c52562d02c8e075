"""The bursty ICL task's `Task`: query cross-entropy, eval on the in-context / in-weights sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from ..model import ModelConfig, query_correct, query_loss
from ._base import Task, register_task
from ._icl import ICLTaskConfig
from ._icl_formats import get_sequence_format
from ._icl_data import load_exemplars
from ._icl_eval import make_eval_sets


@register_task
@dataclasses.dataclass(frozen=True)
class ICLTask(Task):
    """Bursty exemplar-label sequences: query cross-entropy, eval on the in-context / in-weights sets."""

    kind: ClassVar[str] = "icl"
    config_class: ClassVar[type] = ICLTaskConfig
    eval_sets_are_probes: ClassVar[bool] = True
    # earlier runs stored the icl-dynamics sequence format as a flag; their configs still read
    renamed_keys: ClassVar[Mapping[str, Callable[[Any], dict]]] = {
        "icl_dynamics_mode": lambda on: {"sequence_format": "icl_dynamics"} if on else {},
    }

    @classmethod
    def probe_defaults(cls, cfg: ICLTaskConfig) -> dict[str, str]:
        return dict(get_sequence_format(cfg.sequence_format).probe_defaults)

    @classmethod
    def offered_probes(cls, cfg: ICLTaskConfig) -> tuple[str, ...]:
        return get_sequence_format(cfg.sequence_format).probes

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
