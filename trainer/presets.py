"""Named run configs. Each is a complete nested dict; `--set` and config files edit a copy.

- induction-tiny: 2-layer attention-only LM on repeated segments; the induction-head phase
  change happens within about two minutes on 2 CPU cores.
- induction-gpt2: the same task with full GPT-2 blocks (LN, MLP, tied embeddings), exportable.
- icl-bursty: bursty in-context classification (Chan et al. 2022) on synthetic clusters.
- icl-dynamics: the reference setting of "What needs to go right for an induction head?"
  (2 layers, 8 heads, d_model 64, attention-only, RoPE, 5 labels, sequences `A la B lb Q`).
- transience: 12 layers, about 0.9M parameters, the transience setting (slow on CPU).
- icl-regression: in-context linear regression (D=4, K=16; 2 layers, 4 heads, d_model 64, MLP);
  task diversity `--set task.n_tasks=1|4|64|inf` (default inf: fresh Gaussian tasks).
"""

from __future__ import annotations

import copy
import dataclasses

from .model import ModelConfig
from .sections import CheckpointConfig, SeedConfig, TrainConfig
from .tasks import ICLTaskConfig, InductionTaskConfig, RegressionTaskConfig


def _jsonable(value):
    """A default as a config file holds it: tuples as lists, nested config dataclasses as dicts."""
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _defaults(cls) -> dict:
    """A config dataclass's field defaults as a dict: the one place a default is written down."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = _jsonable(default)
    return out


_MODEL_DEFAULTS = _defaults(ModelConfig)
_TRAIN_DEFAULTS = _defaults(TrainConfig)
_INDUCTION_TASK = {"kind": "induction", **_defaults(InductionTaskConfig)}
_ICL_TASK = {"kind": "icl", **_defaults(ICLTaskConfig)}
_ICL_DATA = _ICL_TASK["data"]
_REGRESSION_TASK = {"kind": "regression", **_defaults(RegressionTaskConfig)}


def _preset(model=None, task=None, train=None, checkpoints=None, seeds=None) -> dict:
    return {
        "model": {**_MODEL_DEFAULTS, **(model or {})},
        "task": copy.deepcopy(task or _INDUCTION_TASK),
        "train": {**_TRAIN_DEFAULTS, **(train or {})},
        "seeds": {**_defaults(SeedConfig), **(seeds or {})},
        "checkpoints": {**_defaults(CheckpointConfig), **(checkpoints or {})},
        "interventions": [],
    }


PRESETS: dict[str, dict] = {
    "induction-tiny": _preset(
        model={"attn_only": True, "n_heads": 4, "d_model": 64, "n_ctx": 64},
        train={"steps": 2000, "lr": 1e-3, "warmup_steps": 50, "batch_size": 32, "eval_every": 50},
        checkpoints={"schedule": "every:50"},
    ),
    "induction-gpt2": _preset(
        model={"tied_unembed": True, "n_ctx": 64},
        train={"steps": 1500, "lr": 1e-3, "warmup_steps": 50, "eval_every": 50},
        checkpoints={"schedule": "every:100"},
    ),
    "icl-bursty": _preset(
        model={"head": "classifier", "vocab_size": 0, "d_in": 64, "n_labels": 16, "n_ctx": 32, "attn_only": False,
               "n_heads": 4},
        task={**_ICL_TASK, "fewshot_relabel": False, "class_split": [960, 0, 64], "zipf_alpha": 1.0,
              "data": {**_ICL_DATA, "n_classes": 1024, "noise": 0.3}},
        train={"steps": 2000, "lr": 1e-3, "warmup_steps": 100, "eval_every": 100},
        checkpoints={"schedule": "every:100"},
    ),
    "icl-dynamics": _preset(
        model={"head": "classifier", "vocab_size": 0, "d_in": 512, "n_labels": 5, "n_ctx": 8, "attn_only": True,
               "n_heads": 8, "positional": "rope", "qkv_bias": False, "out_bias": False},
        task={**_ICL_TASK, "context_len": 2, "n_labels": 5, "burstiness": 1, "p_bursty": 1.0,
              "class_split": [50, 1473, 100], "exemplar_split": [1, 4, 0], "sequence_format": "icl_dynamics",
              "label_pairs": [[0, 4], [1, 2], [0, 1], [2, 4], [0, 2], [1, 3], [0, 3], [1, 4]],
              "val_label_pairs": [[2, 3], [3, 4]],
              "data": {**_ICL_DATA, "n_classes": 1623, "n_exemplars": 5, "dim": 512, "noise": 0.1}},
        train={"steps": 3125, "lr": 1e-4, "grad_clip": None, "eval_every": 156},
        seeds={"init_seed": 5, "train_seed": 0, "eval_seed": 1},
        checkpoints={"schedule": "every:125"},
    ),
    "transience": _preset(
        model={"head": "classifier", "vocab_size": 0, "n_layers": 12, "d_model": 80, "n_heads": 8, "d_in": 64,
               "n_labels": 32, "n_ctx": 32, "positional": "rope"},
        task={**_ICL_TASK, "n_labels": 32, "p_bursty": 0.9, "zipf_alpha": 0.0, "class_split": [1600, 0, 100],
              "data": {**_ICL_DATA, "n_classes": 1700, "n_exemplars": 5}},
        train={"steps": 20000, "lr": 3e-4, "warmup_steps": 500, "eval_every": 500},
        checkpoints={"schedule": "log:60+every:1000"},
    ),
    "icl-regression": _preset(
        model={"head": "regression", "vocab_size": 0, "d_in": 5, "n_ctx": 32, "n_heads": 4, "d_model": 64},
        task=_REGRESSION_TASK,
        train={"steps": 2000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "eval_every": 100},
        checkpoints={"schedule": "every:100"},
    ),
}
