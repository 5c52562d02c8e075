"""Llama <-> our ModelConfig and weights: RMSNorm, SwiGLU, rotate-half RoPE, grouped-query attention,
no biases, tied or untied embeddings; every mapping is a reshape or transpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._files import CONFIG_JSON
from ...model import ModelConfig
from ._common import Tensors, _build, _common_refusals, _lm_problems, _need, _refuse, _rope, _t


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
