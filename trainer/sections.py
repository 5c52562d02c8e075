"""The typed sections of a run config (train, seeds, checkpoints): their defaults and checks, in one place.

The presets start from these defaults (`trainer.presets`); `trainer.config.validate` builds them
so that a bad value fails with one sentence before anything is written.
"""

from __future__ import annotations

import dataclasses
import math

MAX_STEPS = 2**31 - 1  # steps are stored as int64, scheduled and counted in int32 on device


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: AdamW with linear warmup then a constant or cosine learning rate."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float | None = 1.0
    log_every: int = 10
    eval_every: int = 100
    eval_size: int = 256

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"train.lr must be a finite positive number, got {self.lr}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"train.steps={self.steps} is more than this tool can schedule ({MAX_STEPS:,}); "
                             "pass fewer steps")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ValueError(f"train.{name} must be in [0, 1) (an Adam moment decay), got {value}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"train.grad_clip must be a positive norm (or null for no clipping), got {self.grad_clip}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.weight_decay must be a finite non-negative number, got {self.weight_decay}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    """The three seeds of icl-dynamics: weights, the training data stream, the evaluation sets."""

    init_seed: int = 0
    train_seed: int = 0
    eval_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("init_seed", "train_seed", "eval_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 2**32:
                raise ValueError(f"seeds.{name} must be an integer in [0, 2**32), got {value!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Which steps are saved: a schedule spec (see `trainer.schedules`) and an optional adaptive rule."""

    schedule: str = "every:100"  # e.g. "every:500+window:400-800:5+adaptive:min_gap=5,max_gap=200"
