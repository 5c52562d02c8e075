"""GPT-NeoX (Pythia) <-> our ModelConfig and weights: parallel or sequential residual, partial
rotate-half rotary, fused per-head QKV, untied ``embed_out``; every mapping is a reshape or transpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._files import CONFIG_JSON
from ...model import ModelConfig
from ._common import Tensors, _build, _common_refusals, _lm_problems, _need, _rope, _t


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
