"""The registry of model heads: what a model reads and what it outputs, by `ModelConfig.head`.

A head names the embedding of its inputs, the probe input kind that feeds it, its number of
outputs and its own config checks; the model, the config and the analysis look it up here
instead of branching on the head's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["ModelHead", "MODEL_HEADS", "register_head", "model_head"]


@dataclasses.dataclass(frozen=True)
class ModelHead:
    """One model head. `embed(config, key=...)` builds the input embedding module (called on one
    sequence's inputs, it returns the (T, d) content embedding; `W_pos` holds learned positions);
    `input_kind` names the probe input kind it reads; `validate(config)` raises ValueError for
    sizes the head cannot use; `output_bias` heads always carry an unembedding bias; only a
    `token_embedding` head can tie its unembedding to the embedding."""

    name: str
    words: str  # e.g. "token language model", in messages
    input_kind: str
    embed: Callable[..., Any]
    n_outputs: Callable[[Any], int]
    validate: Callable[[Any], None] = lambda config: None
    output_bias: bool = False
    token_embedding: bool = False


MODEL_HEADS: dict[str, ModelHead] = {}


def register_head(head: ModelHead) -> ModelHead:
    """Add (or replace) a model head under its name."""
    MODEL_HEADS[head.name] = head
    return head


def model_head(name: str) -> ModelHead:
    """The registered head `name`; ValueError naming the known ones otherwise."""
    if name not in MODEL_HEADS:
        raise ValueError(f"unknown model.head {name!r}; choose one of {', '.join(MODEL_HEADS)}")
    return MODEL_HEADS[name]
