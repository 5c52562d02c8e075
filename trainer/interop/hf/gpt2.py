"""Hugging Face GPT-2 checkpoints <-> our model: tensor layout, config.json, export and import.

HF layout (Conv1D weights are ``x @ W``): ``wte (V, d)``, ``wpe (n_ctx, d)``, per block
``h.{i}.ln_1``, ``attn.c_attn (d, 3d)`` with columns q | k | v (heads contiguous in each),
``attn.c_proj (d, d)``, ``ln_2``, ``mlp.c_fc (d, m)``, ``mlp.c_proj (m, d)``; ``ln_f``;
``lm_head.weight (V, d)`` only when the unembedding is untied. Ours is per head:
``W_Q (H, d, e)``, ``b_Q (H, e)``, ``W_O (H, e, d)``. Every conversion is a reshape or a
transpose, so export -> import is bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_checkpoint_dir
from ...model import ModelConfig

__all__ = ["check_gpt2_compatible", "hf_config", "model_config_from_hf", "to_hf_tensors", "from_hf_tensors",
           "hf_tensor_shapes", "export_hf"]

HF_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "gelu_pytorch_tanh": "gelu_new"}
CONFIG_KEY = "derived_scalars"  # our provenance block inside config.json (HF keeps unknown keys)
BUFFERS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers old GPT-2 files carry; not parameters


def gpt2_problems(config: ModelConfig) -> list[str]:
    """What stops ``config`` from being a GPT-2 (empty when it is one)."""
    problems = []
    if config.head != "lm":
        problems.append("it has a sequence-classifier head (GPT-2 is a token language model)")
    if config.attn_only:
        problems.append("it is attention-only (GPT-2 blocks have an MLP)")
    if not config.layernorm:
        problems.append("it has no LayerNorm (GPT-2 has ln_1, ln_2 and ln_f)")
    if config.positional != "learned":
        problems.append(f"it uses {'rotary' if config.positional == 'rope' else 'no'} position embeddings "
                        "(GPT-2 has learned positions, wpe)")
    if config.activation not in HF_ACTIVATIONS:
        problems.append(f"its MLP activation is {config.activation} (GPT-2's MLP takes gelu_new, gelu or relu)")
    missing = [n for n in ("qkv_bias", "out_bias", "mlp_bias") if not getattr(config, n)]
    if missing:
        problems.append(f"it has no {', '.join(missing)} (GPT-2 has biases on every linear map)")
    if config.unembed_bias:
        problems.append("it has an unembedding bias (GPT-2's lm_head has none)")
    if config.norm != "layernorm":
        problems.append(f"its norm is {config.norm} (GPT-2 has LayerNorm)")
    if config.parallel_residual:
        problems.append("it has a parallel residual (GPT-2's MLP reads the stream after attention)")
    if config.n_kv_heads not in (None, config.n_heads):
        problems.append(f"it has grouped-query attention ({config.n_kv_heads} key/value heads; GPT-2 has one per "
                        "query head)")
    return problems


def check_gpt2_compatible(config: ModelConfig, what: str = "this model") -> None:
    """Raise ValueError naming every feature of ``config`` that GPT-2 cannot express."""
    problems = gpt2_problems(config)
    if problems:
        raise ValueError(f"{what} cannot be written as a GPT-2 checkpoint: {'; '.join(problems)}; export needs "
                         "a GPT-2-compatible architecture such as the induction-gpt2 preset")


def hf_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name (no ``transformer.`` prefix) -> shape, for a GPT-2-compatible config."""
    d, m, V = config.d_model, config.mlp_width, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, d), "wpe.weight": (config.n_ctx, d)}
    for i in range(config.n_layers):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (d,), h + "ln_1.bias": (d,),
            h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,),
            h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
            h + "ln_2.weight": (d,), h + "ln_2.bias": (d,),
            h + "mlp.c_fc.weight": (d, m), h + "mlp.c_fc.bias": (m,),
            h + "mlp.c_proj.weight": (m, d), h + "mlp.c_proj.bias": (d,),
        })
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    if not config.tied_unembed:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def to_hf_tensors(leaves: Mapping[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """Our named leaves (``blocks.0.attn.W_Q``...) -> HF GPT-2 tensors (contiguous, same dtype)."""
    check_gpt2_compatible(config)
    H, d, e = config.n_heads, config.d_model, config.d_head
    out = {"wte.weight": leaves["embed.W_E"], "wpe.weight": leaves["embed.W_pos"]}
    for i in range(config.n_layers):
        b, h = f"blocks.{i}.", f"h.{i}."
        per_head = [np.asarray(leaves[b + f"attn.W_{x}"]).transpose(1, 0, 2).reshape(d, H * e) for x in "QKV"]
        out.update({
            h + "ln_1.weight": leaves[b + "ln1.w"], h + "ln_1.bias": leaves[b + "ln1.b"],
            h + "attn.c_attn.weight": np.concatenate(per_head, axis=1),
            h + "attn.c_attn.bias": np.concatenate([np.asarray(leaves[b + f"attn.b_{x}"]).reshape(H * e)
                                                    for x in "QKV"]),
            h + "attn.c_proj.weight": np.asarray(leaves[b + "attn.W_O"]).reshape(H * e, d),
            h + "attn.c_proj.bias": leaves[b + "attn.b_O"],
            h + "ln_2.weight": leaves[b + "ln2.w"], h + "ln_2.bias": leaves[b + "ln2.b"],
            h + "mlp.c_fc.weight": leaves[b + "mlp.W_in"], h + "mlp.c_fc.bias": leaves[b + "mlp.b_in"],
            h + "mlp.c_proj.weight": leaves[b + "mlp.W_out"], h + "mlp.c_proj.bias": leaves[b + "mlp.b_out"],
        })
    out.update({"ln_f.weight": leaves["ln_final.w"], "ln_f.bias": leaves["ln_final.b"]})
    if not config.tied_unembed:
        out["lm_head.weight"] = np.asarray(leaves["W_U"]).T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_hf_tensors(tensors: Mapping[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """HF GPT-2 tensors (prefix stripped, shapes checked) -> our named leaves (contiguous)."""
    H, d, e = config.n_heads, config.d_model, config.d_head
    out = {"embed.W_E": tensors["wte.weight"], "embed.W_pos": tensors["wpe.weight"]}
    for i in range(config.n_layers):
        b, h = f"blocks.{i}.", f"h.{i}."
        w, bias = np.asarray(tensors[h + "attn.c_attn.weight"]), np.asarray(tensors[h + "attn.c_attn.bias"])
        for j, x in enumerate("QKV"):
            out[b + f"attn.W_{x}"] = w[:, j * d:(j + 1) * d].reshape(d, H, e).transpose(1, 0, 2)
            out[b + f"attn.b_{x}"] = bias[j * d:(j + 1) * d].reshape(H, e)
        out.update({
            b + "ln1.w": tensors[h + "ln_1.weight"], b + "ln1.b": tensors[h + "ln_1.bias"],
            b + "attn.W_O": np.asarray(tensors[h + "attn.c_proj.weight"]).reshape(H, e, d),
            b + "attn.b_O": tensors[h + "attn.c_proj.bias"],
            b + "ln2.w": tensors[h + "ln_2.weight"], b + "ln2.b": tensors[h + "ln_2.bias"],
            b + "mlp.W_in": tensors[h + "mlp.c_fc.weight"], b + "mlp.b_in": tensors[h + "mlp.c_fc.bias"],
            b + "mlp.W_out": tensors[h + "mlp.c_proj.weight"], b + "mlp.b_out": tensors[h + "mlp.c_proj.bias"],
        })
    out.update({"ln_final.w": tensors["ln_f.weight"], "ln_final.b": tensors["ln_f.bias"]})
    if not config.tied_unembed:
        out["W_U"] = np.asarray(tensors["lm_head.weight"]).T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_config(config: ModelConfig, *, bos_token_id: int = 0, provenance: Mapping[str, Any] | None = None) -> dict:
    """The ``config.json`` of a GPT2LMHeadModel with ``config``'s architecture."""
    check_gpt2_compatible(config)
    out = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "n_layer": config.n_layers, "n_head": config.n_heads, "n_embd": config.d_model,
        "n_inner": config.d_mlp, "n_positions": config.n_ctx, "n_ctx": config.n_ctx,
        "vocab_size": config.vocab_size, "activation_function": HF_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.ln_eps, "tie_word_embeddings": config.tied_unembed,
        "initializer_range": config.init_std, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx, "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "bos_token_id": bos_token_id, "eos_token_id": bos_token_id, "torch_dtype": "float32",
    }
    if provenance:
        out[CONFIG_KEY] = dict(provenance)
    return out


def _get(cfg: Mapping[str, Any], where: str, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if default is None:
        raise ValueError(f"{where} has no '{names[0]}'; pass a GPT-2 config.json (written by save_pretrained)")
    return default


def model_config_from_hf(cfg: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a GPT-2 ``config.json``; options GPT-2 models use but we do not are refused."""
    kind = cfg.get("model_type", "gpt2")
    if kind != "gpt2":
        raise ValueError(f"{where} describes a '{kind}' model; only GPT-2 checkpoints (model_type 'gpt2') "
                         "can be imported")
    act = cfg.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{where} has activation_function '{act}'; importable ones are "
                         f"{', '.join(HF_ACTIVATIONS)}")
    # scale_attn_by_inverse_layer_idx (the Stanford CRFM runs) maps to the option of that name;
    # reorder_and_upcast_attn only computes the scores in float32, which this package always does
    for key, ok in (("scale_attn_weights", True), ("add_cross_attention", False)):
        if bool(cfg.get(key, ok)) != ok:
            raise ValueError(f"{where} sets {key}={cfg[key]}; only the standard GPT-2 attention ({key}={ok}) "
                             "can be imported")
    ours = dict(cfg.get(CONFIG_KEY, {}).get("model", {})) if isinstance(cfg.get(CONFIG_KEY), Mapping) else {}
    n_embd = int(_get(cfg, where, "n_embd", "hidden_size"))
    n_inner = cfg.get("n_inner")
    try:
        return ModelConfig(
            n_layers=int(_get(cfg, where, "n_layer", "num_hidden_layers")),
            d_model=n_embd, n_heads=int(_get(cfg, where, "n_head", "num_attention_heads")),
            d_mlp=None if n_inner is None else int(n_inner),
            n_ctx=int(_get(cfg, where, "n_positions", "max_position_embeddings", "n_ctx")),
            head="lm", vocab_size=int(_get(cfg, where, "vocab_size")),
            ln_eps=float(cfg.get("layer_norm_epsilon", 1e-5)), activation=HF_ACTIVATIONS[act],
            positional="learned", tied_unembed=bool(cfg.get("tie_word_embeddings", True)),
            init_std=float(cfg.get("initializer_range", ours.get("init_std", 0.02))),
            rope_base=float(ours.get("rope_base", 10000.0)),
            scale_attn_by_inverse_layer_idx=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def export_hf(run_dir: str | os.PathLike[str], step: int, out_dir: str | os.PathLike[str]) -> Path:
    """Write checkpoint ``step`` of a GPT-2-compatible run as an HF directory (config.json + model.safetensors).

    Refuses a non-empty ``out_dir`` and architectures GPT-2 cannot express; writes nothing then.
    """
    import store

    run_dir, out = Path(run_dir), Path(out_dir)
    info = store.read_run_json(run_dir)
    if "model" not in info:
        raise ValueError(f"run '{run_dir}' has no model config in run.json; it was not written by this package")
    config = ModelConfig.from_dict(info["model"])
    check_gpt2_compatible(config, f"run '{run_dir}'")
    leaves = store.open_archive(run_dir).load(int(step))
    run_config = info.get("config", {})
    bos = int(run_config.get("task", {}).get("bos_token", 0)) if isinstance(run_config, Mapping) else 0
    provenance = {"source_run": str(run_dir.resolve()), "step": int(step), "model": config.to_dict(),
                  "config": run_config, "seeds": info.get("seeds", {})}
    write_checkpoint_dir(out, hf_config(config, bos_token_id=bos, provenance=provenance),
                         to_hf_tensors(leaves, config))
    return out
