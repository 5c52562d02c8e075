"""Hugging Face model families <-> our ModelConfig and weights, and the import of a checkpoint series.

`FAMILIES` maps an HF ``model_type`` (config.json) to an `HFFamily`: how its config becomes a
`ModelConfig` (options the family uses but we do not implement are refused with one sentence,
never approximated), the tensors it must hold, and the reshapes between its layout and our
per-head one (``W_Q (H, d, e)``, ``W_O (H, e, d)``, ``W_in (d, m)``; linear weights in HF are
``(out, in)``). Every conversion is a reshape or transpose, so HF -> ours -> HF is bit-identical.

Families: ``gpt2`` (trainer/hf_gpt2.py), ``gpt_neox`` (Pythia: parallel or sequential residual,
partial rotate-half rotary, fused per-head QKV, untied ``embed_out``) and ``llama`` (RMSNorm,
SwiGLU, rotate-half RoPE, grouped-query attention, no biases, tied or untied embeddings).
`import_hf` reads a series of checkpoint folders of one family into one run directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import hf_gpt2
from ._hf_files import CONFIG_JSON
from .model import ModelConfig

__all__ = ["HFFamily", "FAMILIES", "family_for_hf", "family_for_config", "model_config_from_hf", "export_hf"]

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


# -- GPT-NeoX (Pythia) --------------------------------------------------------------------------
NEOX_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
NEOX_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}


def neox_config_from_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> ModelConfig:
    """ModelConfig of a GPTNeoXForCausalLM config.json (Pythia)."""
    fam = "gpt_neox"
    d, H = int(_need(cfg, where, fam, "hidden_size")), int(_need(cfg, where, fam, "num_attention_heads"))
    act = cfg.get("hidden_act", "gelu")
    if act not in NEOX_ACTIVATIONS:
        raise ValueError(f"{where} sets hidden_act={act!r}, which the gpt_neox import does not implement; "
                         f"importable ones are {', '.join(NEOX_ACTIVATIONS)}")
    _common_refusals(cfg, where, fam, d // H if H else 0)
    base, pct = _rope(cfg, where, fam, 10000.0, 0.25)
    bias = bool(cfg.get("attention_bias", True))
    return _build(
        where, n_layers=int(_need(cfg, where, fam, "num_hidden_layers")), d_model=d, n_heads=H,
        d_mlp=int(_need(cfg, where, fam, "intermediate_size")),
        n_ctx=int(_need(cfg, where, fam, "max_position_embeddings")), vocab_size=int(_need(cfg, where, fam, "vocab_size")),
        ln_eps=float(cfg.get("layer_norm_eps", 1e-5)), activation=NEOX_ACTIVATIONS[act], positional="rope",
        rope_base=base, rope_layout="half", rotary_pct=pct, parallel_residual=bool(cfg.get("use_parallel_residual", True)),
        qkv_bias=bias, out_bias=bias, mlp_bias=True, tied_unembed=bool(cfg.get("tie_word_embeddings", False)),
        init_std=float(cfg.get("initializer_range", 0.02)),
    )


def neox_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, m, V = config.d_model, config.mlp_width, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed_in.weight": (V, d)}
    for i in range(config.n_layers):
        p = f"layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            shapes.update({p + ln + ".weight": (d,), p + ln + ".bias": (d,)})
        shapes.update({p + "attention.query_key_value.weight": (3 * d, d), p + "attention.dense.weight": (d, d),
                       p + "mlp.dense_h_to_4h.weight": (m, d), p + "mlp.dense_h_to_4h.bias": (m,),
                       p + "mlp.dense_4h_to_h.weight": (d, m), p + "mlp.dense_4h_to_h.bias": (d,)})
        if config.qkv_bias:
            shapes.update({p + "attention.query_key_value.bias": (3 * d,), p + "attention.dense.bias": (d,)})
    shapes.update({"final_layer_norm.weight": (d,), "final_layer_norm.bias": (d,)})
    if not config.tied_unembed:
        shapes["embed_out.weight"] = (V, d)
    return shapes


def neox_from_hf(t: Tensors, config: ModelConfig) -> dict[str, np.ndarray]:
    """GPT-NeoX tensors -> our leaves. query_key_value's rows are per head: [q_h | k_h | v_h] blocks of e."""
    H, d, e = config.n_heads, config.d_model, config.d_head
    out = {"embed.W_E": t["embed_in.weight"]}
    for i in range(config.n_layers):
        b, p = f"blocks.{i}.", f"layers.{i}."
        qkv = np.asarray(t[p + "attention.query_key_value.weight"]).reshape(H, 3, e, d)
        for j, x in enumerate("QKV"):
            out[b + f"attn.W_{x}"] = qkv[:, j].transpose(0, 2, 1)
        if config.qkv_bias:
            qkv_b = np.asarray(t[p + "attention.query_key_value.bias"]).reshape(H, 3, e)
            for j, x in enumerate("QKV"):
                out[b + f"attn.b_{x}"] = qkv_b[:, j]
            out[b + "attn.b_O"] = t[p + "attention.dense.bias"]
        out.update({
            b + "ln1.w": t[p + "input_layernorm.weight"], b + "ln1.b": t[p + "input_layernorm.bias"],
            b + "ln2.w": t[p + "post_attention_layernorm.weight"], b + "ln2.b": t[p + "post_attention_layernorm.bias"],
            b + "attn.W_O": _t(t[p + "attention.dense.weight"]).reshape(H, e, d),
            b + "mlp.W_in": _t(t[p + "mlp.dense_h_to_4h.weight"]), b + "mlp.b_in": t[p + "mlp.dense_h_to_4h.bias"],
            b + "mlp.W_out": _t(t[p + "mlp.dense_4h_to_h.weight"]), b + "mlp.b_out": t[p + "mlp.dense_4h_to_h.bias"],
        })
    out.update({"ln_final.w": t["final_layer_norm.weight"], "ln_final.b": t["final_layer_norm.bias"]})
    if not config.tied_unembed:
        out["W_U"] = _t(t["embed_out.weight"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def neox_to_hf(leaves: Tensors, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our leaves -> GPT-NeoX tensors (names without the ``gpt_neox.`` prefix)."""
    H, d, e = config.n_heads, config.d_model, config.d_head
    out = {"embed_in.weight": leaves["embed.W_E"]}
    for i in range(config.n_layers):
        b, p = f"blocks.{i}.", f"layers.{i}."
        qkv = np.stack([np.asarray(leaves[b + f"attn.W_{x}"]).transpose(0, 2, 1) for x in "QKV"], axis=1)
        out[p + "attention.query_key_value.weight"] = qkv.reshape(3 * d, d)
        if config.qkv_bias:
            out[p + "attention.query_key_value.bias"] = np.stack(
                [np.asarray(leaves[b + f"attn.b_{x}"]) for x in "QKV"], axis=1).reshape(3 * d)
            out[p + "attention.dense.bias"] = leaves[b + "attn.b_O"]
        out.update({
            p + "input_layernorm.weight": leaves[b + "ln1.w"], p + "input_layernorm.bias": leaves[b + "ln1.b"],
            p + "post_attention_layernorm.weight": leaves[b + "ln2.w"],
            p + "post_attention_layernorm.bias": leaves[b + "ln2.b"],
            p + "attention.dense.weight": np.asarray(leaves[b + "attn.W_O"]).reshape(H * e, d).T,
            p + "mlp.dense_h_to_4h.weight": _t(leaves[b + "mlp.W_in"]), p + "mlp.dense_h_to_4h.bias": leaves[b + "mlp.b_in"],
            p + "mlp.dense_4h_to_h.weight": _t(leaves[b + "mlp.W_out"]), p + "mlp.dense_4h_to_h.bias": leaves[b + "mlp.b_out"],
        })
    out.update({"final_layer_norm.weight": leaves["ln_final.w"], "final_layer_norm.bias": leaves["ln_final.b"]})
    if not config.tied_unembed:
        out["embed_out.weight"] = _t(leaves["W_U"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def neox_hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json of a GPTNeoXForCausalLM with ``config``'s architecture."""
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "intermediate_size": config.mlp_width, "max_position_embeddings": config.n_ctx,
        "vocab_size": config.vocab_size, "hidden_act": NEOX_HF_ACTIVATION[config.activation],
        "layer_norm_eps": config.ln_eps, "use_parallel_residual": config.parallel_residual,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base,
                            "partial_rotary_factor": config.rotary_pct},
        "attention_bias": config.qkv_bias, "tie_word_embeddings": config.tied_unembed,
        "initializer_range": config.init_std, "attention_dropout": 0.0, "hidden_dropout": 0.0,
    }


# -- Llama --------------------------------------------------------------------------------------
def llama_config_from_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> ModelConfig:
    """ModelConfig of a LlamaForCausalLM config.json (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""
    fam = "llama"
    d, H = int(_need(cfg, where, fam, "hidden_size")), int(_need(cfg, where, fam, "num_attention_heads"))
    _refuse(cfg, where, fam, "hidden_act", ("silu",), "the Llama MLP is SwiGLU with silu")
    _refuse(cfg, where, fam, "attention_bias", (False,), "Llama projections have no biases")
    _refuse(cfg, where, fam, "mlp_bias", (False,), "Llama projections have no biases")
    _common_refusals(cfg, where, fam, d // H if H else 0)
    base, pct = _rope(cfg, where, fam, 10000.0, 1.0)
    if pct != 1.0:
        raise ValueError(f"{where} sets partial_rotary_factor={pct}, which the llama import does not implement "
                         "(Llama rotates whole heads); only checkpoints without it can be imported")
    kv = int(cfg.get("num_key_value_heads") or H)
    return _build(
        where, n_layers=int(_need(cfg, where, fam, "num_hidden_layers")), d_model=d, n_heads=H,
        n_kv_heads=None if kv == H else kv, d_mlp=int(_need(cfg, where, fam, "intermediate_size")),
        n_ctx=int(_need(cfg, where, fam, "max_position_embeddings")), vocab_size=int(_need(cfg, where, fam, "vocab_size")),
        norm="rmsnorm", ln_eps=float(cfg.get("rms_norm_eps", 1e-6)), activation="swiglu", positional="rope",
        rope_base=base, rope_layout="half", qkv_bias=False, out_bias=False, mlp_bias=False,
        tied_unembed=bool(cfg.get("tie_word_embeddings", False)), init_std=float(cfg.get("initializer_range", 0.02)),
    )


def llama_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, m, V, e = config.d_model, config.mlp_width, config.vocab_size, config.d_head
    H, G = config.n_heads, config.kv_heads
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (V, d)}
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (H * e, d), p + "self_attn.k_proj.weight": (G * e, d),
            p + "self_attn.v_proj.weight": (G * e, d), p + "self_attn.o_proj.weight": (d, H * e),
            p + "mlp.gate_proj.weight": (m, d), p + "mlp.up_proj.weight": (m, d), p + "mlp.down_proj.weight": (d, m),
        })
    shapes["norm.weight"] = (d,)
    if not config.tied_unembed:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def llama_from_hf(t: Tensors, config: ModelConfig) -> dict[str, np.ndarray]:
    """Llama tensors -> our leaves: q_proj rows are heads of e, k/v_proj rows the kv heads; up_proj is
    our W_in (the linear half of SwiGLU), gate_proj our W_gate (through silu)."""
    H, G, d, e = config.n_heads, config.kv_heads, config.d_model, config.d_head
    out = {"embed.W_E": t["embed_tokens.weight"]}
    for i in range(config.n_layers):
        b, p = f"blocks.{i}.", f"layers.{i}."
        for x, n_heads in (("Q", H), ("K", G), ("V", G)):
            w = np.asarray(t[p + f"self_attn.{x.lower()}_proj.weight"])
            out[b + f"attn.W_{x}"] = w.reshape(n_heads, e, d).transpose(0, 2, 1)
        out.update({
            b + "ln1.w": t[p + "input_layernorm.weight"], b + "ln2.w": t[p + "post_attention_layernorm.weight"],
            b + "attn.W_O": _t(t[p + "self_attn.o_proj.weight"]).reshape(H, e, d),
            b + "mlp.W_in": _t(t[p + "mlp.up_proj.weight"]), b + "mlp.W_gate": _t(t[p + "mlp.gate_proj.weight"]),
            b + "mlp.W_out": _t(t[p + "mlp.down_proj.weight"]),
        })
    out["ln_final.w"] = t["norm.weight"]
    if not config.tied_unembed:
        out["W_U"] = _t(t["lm_head.weight"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def llama_to_hf(leaves: Tensors, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our leaves -> Llama tensors (names without the ``model.`` prefix)."""
    H, d, e = config.n_heads, config.d_model, config.d_head
    out = {"embed_tokens.weight": leaves["embed.W_E"]}
    for i in range(config.n_layers):
        b, p = f"blocks.{i}.", f"layers.{i}."
        for x in "QKV":
            w = np.asarray(leaves[b + f"attn.W_{x}"])
            out[p + f"self_attn.{x.lower()}_proj.weight"] = w.transpose(0, 2, 1).reshape(-1, d)
        out.update({
            p + "input_layernorm.weight": leaves[b + "ln1.w"], p + "post_attention_layernorm.weight": leaves[b + "ln2.w"],
            p + "self_attn.o_proj.weight": np.asarray(leaves[b + "attn.W_O"]).reshape(H * e, d).T,
            p + "mlp.up_proj.weight": _t(leaves[b + "mlp.W_in"]), p + "mlp.gate_proj.weight": _t(leaves[b + "mlp.W_gate"]),
            p + "mlp.down_proj.weight": _t(leaves[b + "mlp.W_out"]),
        })
    out["norm.weight"] = leaves["ln_final.w"]
    if not config.tied_unembed:
        out["lm_head.weight"] = _t(leaves["W_U"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def llama_hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM with ``config``'s architecture."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads, "head_dim": config.d_head, "intermediate_size": config.mlp_width,
        "max_position_embeddings": config.n_ctx, "vocab_size": config.vocab_size, "hidden_act": "silu",
        "rms_norm_eps": config.ln_eps, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": config.tied_unembed,
        "initializer_range": config.init_std,
    }


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


def neox_problems(config: ModelConfig) -> list[str]:
    """What stops ``config`` from being a GPT-NeoX (empty when it is one)."""
    problems = _lm_problems(config)
    if config.norm != "layernorm":
        problems.append(f"its norm is {config.norm} (GPT-NeoX has LayerNorm)")
    if config.positional != "rope" or config.rope_layout != "half":
        problems.append("it does not use rotate-half rotary positions")
    if config.activation not in NEOX_HF_ACTIVATION:
        problems.append(f"its MLP activation is {config.activation}")
    if not config.mlp_bias or config.qkv_bias != config.out_bias:
        problems.append("its biases are not GPT-NeoX's (MLP biases, attention biases on both or neither)")
    if config.kv_heads != config.n_heads:
        problems.append("it has grouped-query attention")
    return problems


def llama_problems(config: ModelConfig) -> list[str]:
    """What stops ``config`` from being a Llama (empty when it is one)."""
    problems = _lm_problems(config)
    if config.norm != "rmsnorm":
        problems.append(f"its norm is {config.norm} (Llama has RMSNorm)")
    if config.positional != "rope" or config.rope_layout != "half" or config.rotary_pct != 1.0:
        problems.append("it does not rotate whole heads with rotate-half rotary positions")
    if config.activation != "swiglu":
        problems.append(f"its MLP activation is {config.activation} (Llama's is SwiGLU)")
    if config.qkv_bias or config.out_bias or config.mlp_bias:
        problems.append("it has biases (Llama has none)")
    if config.parallel_residual:
        problems.append("it has a parallel residual")
    return problems


# -- the registry -------------------------------------------------------------------------------
FAMILIES: dict[str, HFFamily] = {
    "gpt2": HFFamily("gpt2", "GPT2LMHeadModel", "GPT-2 language model", "transformer.", hf_gpt2.model_config_from_hf,
                     hf_gpt2.hf_tensor_shapes, hf_gpt2.from_hf_tensors, hf_gpt2.to_hf_tensors,
                     lambda c: hf_gpt2.hf_config(c), "lm_head.weight", hf_gpt2.gpt2_problems, hf_gpt2.BUFFERS),
    "gpt_neox": HFFamily("gpt_neox", "GPTNeoXForCausalLM", "GPT-NeoX language model", "gpt_neox.", neox_config_from_hf, neox_tensor_shapes,
                         neox_from_hf, neox_to_hf, neox_hf_config, "embed_out.weight", neox_problems,
                         ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")),
    "llama": HFFamily("llama", "LlamaForCausalLM", "Llama language model", "model.", llama_config_from_hf, llama_tensor_shapes,
                      llama_from_hf, llama_to_hf, llama_hf_config, "lm_head.weight", llama_problems,
                      ("rotary_emb.inv_freq",)),
}


def family_for_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> HFFamily:
    """The family of a config.json by its ``model_type`` (GPT-2 when it has none, as old files)."""
    kind = cfg.get("model_type", "gpt2")
    if kind not in FAMILIES:
        raise ValueError(f"{where} describes a '{kind}' model, which cannot be imported; importable model types "
                         f"are {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family_for_config(config: ModelConfig, what: str = "this model") -> HFFamily:
    """The family that expresses ``config`` exactly; one sentence naming what stops each otherwise."""
    reasons = []
    for family in FAMILIES.values():
        problems = family.problems(config)
        if not problems:
            return family
        reasons.append(f"not {family.display.split()[0]}, as {', '.join(problems)}")
    raise ValueError(f"{what} cannot be written as a Hugging Face checkpoint ({'; '.join(reasons)}); export needs an "
                     "architecture of one family, such as the induction-gpt2 preset")


def export_hf(run_dir: str | os.PathLike[str], step: int, out_dir: str | os.PathLike[str]) -> Path:
    """Write checkpoint ``step`` of a run as an HF directory of its family (config.json + model.safetensors),
    loadable by transformers' AutoModelForCausalLM; nothing is written for an architecture no family expresses."""
    import store
    from ._hf_files import write_checkpoint_dir

    run_dir = Path(run_dir)
    info = store.read_run_json(run_dir)
    if "model" not in info:
        raise ValueError(f"run '{run_dir}' has no model config in run.json; it was not written by this package")
    config = ModelConfig.from_dict(info["model"])
    family = family_for_config(config, f"run '{run_dir}'")
    if family.model_type == "gpt2":
        return hf_gpt2.export_hf(run_dir, step, out_dir)
    leaves = store.open_archive(run_dir).load(int(step))
    run_config = info.get("config", {})
    bos = int(run_config.get("task", {}).get("bos_token", 0)) if isinstance(run_config, Mapping) else 0
    hf_cfg = {**family.hf_config(config), "bos_token_id": bos, "eos_token_id": bos, "torch_dtype": "float32",
              hf_gpt2.CONFIG_KEY: {"source_run": str(run_dir.resolve()), "step": int(step), "model": config.to_dict(),
                                   "config": run_config, "seeds": info.get("seeds", {})}}
    tensors = {(k if k == family.head_name else family.prefix + k): v for k, v in family.to_hf(leaves, config).items()}
    write_checkpoint_dir(Path(out_dir), hf_cfg, tensors)
    return Path(out_dir)


def model_config_from_hf(cfg: Mapping[str, Any], where: str = CONFIG_JSON) -> ModelConfig:
    """Our ModelConfig for a config.json of any registered family."""
    return family_for_hf(cfg, where).config_from_hf(cfg, where)
