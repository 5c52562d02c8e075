"""What every Hugging Face family shares: the `HFFamily` record and the config.json reading helpers
(a missing key or an option we do not implement is refused with one sentence, never approximated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...model import ModelConfig


Tensors = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """One HF architecture: config.json -> ModelConfig, expected tensors, and both weight mappings.

    Tensor names are without the base-model ``prefix`` (``transformer.``, ``gpt_neox.``, ``model.``),
    which HF puts on every tensor but the LM head; names ending in one of ``buffers`` are
    non-parameter buffers old files carry (causal masks, rotary frequencies) and are ignored.
    """

    model_type: str
    architecture: str  # the *ForCausalLM class, for config.json and messages
    display: str  # "GPT-2 language model", for messages
    prefix: str
    config_from_hf: Callable[[Mapping[str, Any], str], ModelConfig]
    tensor_shapes: Callable[[ModelConfig], dict[str, tuple[int, ...]]]
    from_hf: Callable[[Tensors, ModelConfig], dict[str, np.ndarray]]
    to_hf: Callable[[Tensors, ModelConfig], dict[str, np.ndarray]]
    hf_config: Callable[[ModelConfig], dict[str, Any]]
    head_name: str  # the untied LM head tensor (allowed and ignored when the embeddings are tied)
    problems: Callable[[ModelConfig], list[str]]  # what stops a ModelConfig from being this family (export)
    buffers: tuple[str, ...] = ()

    def strip(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name


# -- shared helpers -----------------------------------------------------------------------------
def _need(cfg: Mapping[str, Any], where: str, family: str, *names: str) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    raise ValueError(f"{where} has no '{names[0]}'; pass a {family} config.json (written by save_pretrained)")


def _refuse(cfg: Mapping[str, Any], where: str, family: str, key: str, allowed: tuple[Any, ...],
            why: str) -> None:
    """One sentence if config.json sets ``key`` to a value we do not implement (absent/None is fine)."""
    value = cfg.get(key)
    if value is not None and value not in allowed:
        raise ValueError(f"{where} sets {key}={value!r}, which the {family} import does not implement ({why}); "
                         "only checkpoints without it can be imported")


def _rope(cfg: Mapping[str, Any], where: str, family: str, default_base: float,
          default_pct: float) -> tuple[float, float]:
    """(rope base, rotary fraction) from ``rope_parameters`` (transformers >= 5) or the older keys;
    any rope type but the default (linear, dynamic, yarn, llama3 scaling...) is refused."""
    _refuse(cfg, where, family, "rope_scaling", (), "rotary scaling changes the positions' frequencies")
    params = cfg.get("rope_parameters") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{where} has rope_parameters={params!r}; expected a JSON object")
    _refuse(params, f"{where} (rope_parameters)", family, "rope_type", ("default",),
            "only unscaled rotary embeddings are implemented")
    base = params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", default_base)))
    pct = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct", default_pct)))
    return float(base), float(pct)


def _common_refusals(cfg: Mapping[str, Any], where: str, family: str, d_head: int) -> None:
    _refuse(cfg, where, family, "sliding_window", (), "attention is over the whole causal context")
    _refuse(cfg, where, family, "add_cross_attention", (False,), "decoder-only models only")
    _refuse(cfg, where, family, "head_dim", (d_head,), "the head size must be hidden_size / num_attention_heads")


def _build(where: str, **kwargs: Any) -> ModelConfig:
    try:
        return ModelConfig(head="lm", **kwargs)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _t(a: Any) -> np.ndarray:
    return np.asarray(a).T


# -- which family a ModelConfig is (export) -------------------------------------------------------
def _lm_problems(config: ModelConfig) -> list[str]:
    problems = []
    if config.head != "lm":
        problems.append(f"it has a {config.head} head (a causal LM has a token head)")
    if config.attn_only:
        problems.append("it is attention-only (the blocks need an MLP)")
    if not config.layernorm:
        problems.append("it has no norms")
    if config.unembed_bias:
        problems.append("it has an unembedding bias")
    if config.scale_attn_by_inverse_layer_idx:
        problems.append("it divides block l's attention scores by l + 1 (a GPT-2 option)")
    return problems
