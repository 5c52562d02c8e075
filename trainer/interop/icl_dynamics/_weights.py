"""Checkpoint records onto this project's classifier: weights, Adam moments and seeds per checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...model import ModelConfig, build_model, load_named_leaves, named_leaves
from ._config import _ADAM, _CKPT_NAME, _SEEDS, icl_dynamics_model_config
from ._records import read_named_records


def _to_project_leaves(get: Callable[[str], np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Project leaves from icl-dynamics arrays; `get(path)` takes a path below `model.`."""
    H, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
    out = {
        "embed.W_ex": get("example_embed.weight").T,  # (d, D_in) -> (D_in, d)
        "embed.b_ex": get("example_embed.bias"),
        "embed.W_lab": get("label_embed.weight").T,  # (d, C) one-hot map -> (C, d) table
    }
    for i in range(cfg.n_layers):
        src, dst = f"transformer.blocks[{i}].", f"blocks.{i}."
        out[dst + "ln1.w"] = get(src + "norm1.weight")
        out[dst + "ln1.b"] = get(src + "norm1.bias")
        qkv = get(src + "attn.qkv.weight")  # rows s*d + h*e + j: stream s, head h, component j
        for s, stream in enumerate("QKV"):
            out[dst + f"attn.W_{stream}"] = qkv[s * d:(s + 1) * d].reshape(H, e, d).transpose(0, 2, 1)
        out[dst + "attn.W_O"] = get(src + "attn.proj.weight").T.reshape(H, e, d)  # input h*e + j -> (H, e, d)
        if not cfg.attn_only:
            out[dst + "ln2.w"] = get(src + "norm2.weight")
            out[dst + "ln2.b"] = get(src + "norm2.bias")
            out[dst + "mlp.W_in"] = get(src + "mlp.fc1.weight").T
            out[dst + "mlp.b_in"] = get(src + "mlp.fc1.bias")
            out[dst + "mlp.W_out"] = get(src + "mlp.fc2.weight").T
            out[dst + "mlp.b_out"] = get(src + "mlp.fc2.bias")
    out["ln_final.w"] = get("transformer.norm.weight")
    out["ln_final.b"] = get("transformer.norm.bias")
    out["W_U"] = get("unembed.weight").T  # (C, d) -> (d, C)
    out["b_U"] = get("unembed.bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def _leaf_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """`leaf_specs(build_model(cfg))` from shapes alone (tracing; building eagerly takes seconds)."""
    shapes = jax.eval_shape(lambda: named_leaves(build_model(cfg)))
    return {name: (tuple(s.shape), np.dtype(s.dtype).name) for name, s in shapes.items()}


@functools.lru_cache(maxsize=8)
def _zero_model(cfg: ModelConfig):
    """A model of `cfg` with zero weights, made from shapes (no random init): a loading template."""
    shapes = eqx.filter_eval_shape(build_model, cfg)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def load_icl_dynamics_model(path: str | Path, config_json: dict, *, d_in: int | None = None):
    """`(sequences, model)`: the checkpoint as this project's `Transformer`, ready to call."""
    sequences, params, _, _ = load_icl_dynamics_checkpoint(path, config_json, d_in=d_in)
    cfg = icl_dynamics_model_config(config_json, d_in=params["embed.W_ex"].shape[0])
    return sequences, load_named_leaves(_zero_model(cfg), params)


def load_icl_dynamics_checkpoint(
    path: str | Path, config_json: dict, *, d_in: int | None = None
) -> tuple[int, dict[str, np.ndarray], dict[str, Any], dict[str, list[int]]]:
    """`(sequences, params, optimizer, seeds)` of one checkpoint, weights in this project's layout.

    `params` is keyed like `named_leaves(build_model(icl_dynamics_model_config(config_json)))`.
    `optimizer` is `{"name": "adam", "count": Adam steps, "mu": {...}, "nu": {...}}` with the
    moments mapped to the same names and layouts. `seeds` are the three raw threefry keys
    (`eval_model_seed`, `train_data_seed`, `train_model_seed`) as uint32 pairs.
    """
    path = Path(path)
    named = read_named_records(path, config_json, d_in=d_in)
    sequences = int(named["iter"])
    m = _CKPT_NAME.match(path.name)
    if m and int(m.group(1)) != sequences:
        raise ValueError(f"checkpoint {path} record 0 (iter) holds {sequences} but the file name says "
                         f"{int(m.group(1))}; the file was renamed or belongs to another run")
    count = int(named["opt_state[0].count"])
    bs = config_json.get("train_bs")
    if bs and sequences % int(bs) == 0 and count != sequences // int(bs):
        raise ValueError(f"checkpoint {path} record opt_state[0].count holds {count} Adam steps but {sequences} "
                         f"sequences at train_bs {bs} imply {sequences // int(bs)}; the file is inconsistent")
    cfg = icl_dynamics_model_config(config_json, d_in=named["model.example_embed.weight"].shape[1])
    params = _to_project_leaves(lambda p: named["model." + p], cfg)
    specs = _leaf_specs(cfg)
    assert set(params) == set(specs), (sorted(params), sorted(specs))  # our own mapping's invariant
    for name, (shape, _) in specs.items():
        assert params[name].shape == shape, (name, params[name].shape, shape)
    optimizer = {
        "name": "adam",
        "count": count,
        "mu": _to_project_leaves(lambda p: named[_ADAM[0] + p], cfg),
        "nu": _to_project_leaves(lambda p: named[_ADAM[1] + p], cfg),
    }
    seeds = {s: [int(v) for v in named[f"seeds.{s}"]] for s in _SEEDS}
    return sequences, params, optimizer, seeds
