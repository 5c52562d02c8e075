"""Interventions during training, expressed as model caches: ablate or clamp a component for a window of steps.

Config entries (list under `interventions`):
  {"kind": "ablate_head",   "layer": L, "head": H, "start": S, "stop": E}
  {"kind": "clamp_pattern", "layer": L, "head": H, "pattern": "uniform"|"prev_token"|"bos", "start": S, "stop": E}
  {"kind": "ablate_neuron", "layer": L, "neuron": N, "start": S, "stop": E}
Active for training steps S <= t < E. Built inside the jitted step, so t is traced, not retraced.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .model import ModelConfig

KINDS = ("ablate_head", "clamp_pattern", "ablate_neuron")
PATTERNS = ("uniform", "prev_token", "bos")


@dataclasses.dataclass(frozen=True)
class Intervention:
    kind: str
    layer: int
    index: int  # head or neuron
    start: int
    stop: int
    pattern: str = "uniform"


def parse_interventions(entries: list, config: dict) -> tuple[Intervention, ...]:
    """Validate intervention entries against the model config; clear errors for bad ones."""
    model = config["model"]
    out = []
    for i, entry in enumerate(entries or []):
        where = f"interventions[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
            raise ValueError(f"{where} needs a kind in {', '.join(KINDS)}, got {entry!r}")
        kind = entry["kind"]
        allowed = {"kind", "layer", "start", "stop", "neuron" if kind == "ablate_neuron" else "head"}
        if kind == "clamp_pattern":
            allowed.add("pattern")
        extra = set(entry) - allowed
        if extra:
            raise ValueError(f"{where} ({kind}) has unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        layer = entry.get("layer")
        if not isinstance(layer, int) or not 0 <= layer < model["n_layers"]:
            raise ValueError(f"{where}.layer must be in 0..{model['n_layers'] - 1}, got {layer!r}")
        if kind == "ablate_neuron":
            if model.get("attn_only"):
                raise ValueError(f"{where} ablates an MLP neuron but the model is attention-only")
            width = model.get("d_mlp") or 4 * model["d_model"]
            index, limit, what = entry.get("neuron"), width, "neuron"
        else:
            index, limit, what = entry.get("head"), model["n_heads"], "head"
        if not isinstance(index, int) or not 0 <= index < limit:
            raise ValueError(f"{where}.{what} must be in 0..{limit - 1}, got {index!r}")
        start, stop = entry.get("start", 0), entry.get("stop", config["train"]["steps"])
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop):
            raise ValueError(f"{where} needs integer 0 <= start < stop, got start={start!r}, stop={stop!r}")
        pattern = entry.get("pattern", "uniform")
        if pattern not in PATTERNS:
            raise ValueError(f"{where}.pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        out.append(Intervention(kind, layer, index, start, stop, pattern))
    return tuple(out)


def _fixed_pattern(name: str, n_pos: int):
    causal = jnp.tril(jnp.ones((n_pos, n_pos), jnp.float32))
    if name == "uniform":
        return causal / causal.sum(-1, keepdims=True)
    if name == "bos":
        return jnp.zeros((n_pos, n_pos), jnp.float32).at[:, 0].set(1.0)
    prev = jnp.eye(n_pos, k=-1, dtype=jnp.float32)
    return prev.at[0, 0].set(1.0)


def intervention_cache(interventions: tuple[Intervention, ...], cfg: ModelConfig, n_pos: int, step):
    """(cache, cache_mask) for one example at training step `step` (a traced int)."""
    if not interventions:
        return None, None
    cache: dict = {"layer_outputs": {}}
    mask: dict = {"layer_outputs": {}}
    H = cfg.n_heads
    for iv in interventions:
        active = (step >= iv.start) & (step < iv.stop)
        c_layer = cache["layer_outputs"].setdefault(iv.layer, {})
        m_layer = mask["layer_outputs"].setdefault(iv.layer, {})
        if iv.kind == "ablate_neuron":
            sub, name = "mlp_output", "post"
            shape_value = jnp.zeros((n_pos, cfg.mlp_width), jnp.float32)
            sel = (jnp.arange(cfg.mlp_width) == iv.index)[None, :] & active
        elif iv.kind == "ablate_head":
            sub, name = "attn_output", "z"
            shape_value = jnp.zeros((H, n_pos, cfg.d_head), jnp.float32)
            sel = (jnp.arange(H) == iv.index)[:, None, None] & active
        else:
            sub, name = "attn_output", "pattern"
            shape_value = jnp.broadcast_to(_fixed_pattern(iv.pattern, n_pos), (H, n_pos, n_pos))
            sel = (jnp.arange(H) == iv.index)[:, None, None] & active
        c_sub, m_sub = c_layer.setdefault(sub, {}), m_layer.setdefault(sub, {})
        if name in c_sub:  # merge with an earlier intervention on the same activation
            c_sub[name] = jnp.where(sel, shape_value, c_sub[name])
            m_sub[name] = m_sub[name] | sel
        else:
            c_sub[name], m_sub[name] = shape_value, sel
    return cache, mask
