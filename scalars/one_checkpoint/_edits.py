"""Ablations and patches of one checkpoint, expressed as caches like the engine's interventions.

Each helper runs the batch once, edits one activation (a head's z, a neuron's post-activation,
the residual stream at one position) with the engine's own helpers (`ablation_value`,
`replace_heads`), and re-runs blocks `layer`.. from the clean resid_pre with that edit in the
cache (`Transformer.forward_from`, as `_interventions.run_from` does). Patching here runs the
clean inputs with one activation taken from the corrupted run (noising); swap the two inputs
for denoising, the direction of the engine's `patch_*` types.
"""

from __future__ import annotations

import operator

import equinox as eqx
import jax
import jax.numpy as jnp

from ..interventions import _ablation as iv
from ._cache import ActivationCache
from ._model import CheckpointModel, Inputs

__all__ = ["ablate_head", "patch_head", "ablate_neuron", "patch_resid"]

Result = jax.Array | tuple[jax.Array, ActivationCache]


def _check_index(what: str, value: int, size: int, unit: str) -> int:
    """`value` as an index in 0..size-1 (negative counts from the end), or one clear sentence."""
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not -size <= index < size:
        raise ValueError(f"{what} {value!r} is out of range: this model has {size} {unit} (0..{size - 1})")
    return index % size


def _check_pair(clean: Inputs, corrupt: Inputs) -> None:
    a, b = (jax.tree_util.tree_map(jnp.shape, x) for x in (clean, corrupt))
    if a != b:
        raise ValueError(f"clean and corrupted inputs must have the same shapes to patch between them, got {a} and {b}")


def _seq_len(tree: dict) -> int:
    return tree["layer_outputs"][0]["resid_pre"].shape[1]


def _rerun(model: CheckpointModel, layer: int, base: dict, entries: dict, resid: jax.Array | None = None) -> dict:
    """`base` with blocks `layer`.. re-run from its resid_pre of `layer` (or `resid`) with batched
    cache `entries` for that layer; earlier layers' activations are kept as they are."""
    resid = base["layer_outputs"][layer]["resid_pre"] if resid is None else resid
    tail = jax.vmap(lambda r, c: model.forward_from(layer, r, cache=c))(resid, {"layer_outputs": {layer: entries}})
    return {**base, **tail, "layer_outputs": base["layer_outputs"][:layer] + tail["layer_outputs"][layer:]}


def _result(tree: dict, return_cache: bool) -> Result:
    return (tree["logits"], ActivationCache(tree)) if return_cache else tree["logits"]


@eqx.filter_jit
def _ablate_head(model, inputs, layer: int, head: int, kind: str) -> dict:
    base = model.batched_aux(inputs)
    z = base["layer_outputs"][layer]["attn_output"]["z"]  # (B, H, T, e)
    z_new = iv.replace_heads(z, jnp.arange(z.shape[1]) == head, iv.ablation_value(z, kind))
    return _rerun(model, layer, base, {"attn_output": {"z": z_new}})


def ablate_head(model: CheckpointModel, inputs: Inputs, layer: int, head: int, kind: str = "zero", *,
                return_cache: bool = False) -> Result:
    """Logits with head (layer, head)'s z replaced by 0 (`kind="zero"`), by its mean over the batch
    and positions (`"mean"`) or over the batch at each position (`"mean_per_position"`), everything
    downstream recomputed; with `return_cache` also the cache."""
    cfg = model.config
    layer = _check_index("layer", layer, cfg.n_layers, "layers")
    head = _check_index("head", head, cfg.n_heads, "heads per layer")
    if kind not in iv.ABLATIONS:
        raise ValueError(f"kind must be one of {', '.join(iv.ABLATIONS)}, got {kind!r}")
    return _result(_ablate_head(model, inputs, layer, head, kind), return_cache)


@eqx.filter_jit
def _patch_head(model, clean, corrupt, layer: int, head: int, position: int | None) -> dict:
    base, source = model.batched_aux(clean), model.batched_aux(corrupt)
    z = base["layer_outputs"][layer]["attn_output"]["z"]  # (B, H, T, e)
    z_src = source["layer_outputs"][layer]["attn_output"]["z"]
    heads = jnp.arange(z.shape[1]) == head
    if position is None:
        z_new = iv.replace_heads(z, heads, z_src)
    else:
        site = heads[:, None] & (jnp.arange(z.shape[2]) == position)[None, :]  # (H, T)
        z_new = jnp.where(site[None, :, :, None], z_src, z)
    return _rerun(model, layer, base, {"attn_output": {"z": z_new}})


def patch_head(model: CheckpointModel, clean_inputs: Inputs, corrupt_inputs: Inputs, layer: int, head: int,
               position: int | None = None, *, return_cache: bool = False) -> Result:
    """Logits of the clean inputs with head (layer, head)'s z taken from the corrupted run, at every
    query position or only at `position`; with `return_cache` also the cache."""
    cfg = model.config
    _check_pair(clean_inputs, corrupt_inputs)
    layer = _check_index("layer", layer, cfg.n_layers, "layers")
    head = _check_index("head", head, cfg.n_heads, "heads per layer")
    if position is not None:
        position = _check_index("position", position, _positions(model, clean_inputs), "positions")
    return _result(_patch_head(model, clean_inputs, corrupt_inputs, layer, head, position), return_cache)


@eqx.filter_jit
def _ablate_neuron(model, inputs, layer: int, neuron: int, kind: str) -> dict:
    base = model.batched_aux(inputs)
    post = base["layer_outputs"][layer]["mlp_output"]["post"]  # (B, T, m)
    value = _NEURON_VALUES[kind](post[..., neuron])  # broadcasts against (B, T)
    return _rerun(model, layer, base, {"mlp_output": {"post": post.at[..., neuron].set(value)}})


_NEURON_VALUES = {  # what an ablated neuron's post-activation (B, T) becomes, by kind (as iv.ABLATIONS)
    "zero": lambda a: jnp.zeros((), a.dtype),
    "mean": lambda a: a.mean(),
    "mean_per_position": lambda a: a.mean(0, keepdims=True),
}


def ablate_neuron(model: CheckpointModel, inputs: Inputs, layer: int, neuron: int, kind: str = "zero", *,
                  return_cache: bool = False) -> Result:
    """Logits with MLP neuron (layer, neuron)'s post-activation set to 0 (`kind="zero"`), to its mean
    over the batch and positions (`"mean"`) or over the batch at each position (`"mean_per_position"`);
    with `return_cache` also the cache."""
    cfg = model.config
    if cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLP neurons to ablate")
    layer = _check_index("layer", layer, cfg.n_layers, "layers")
    neuron = _check_index("neuron", neuron, cfg.mlp_width, "MLP neurons per layer")
    if kind not in iv.ABLATIONS:
        raise ValueError(f"kind must be one of {', '.join(iv.ABLATIONS)}, got {kind!r}")
    return _result(_ablate_neuron(model, inputs, layer, neuron, kind), return_cache)


@eqx.filter_jit
def _patch_resid(model, clean, corrupt, layer: int, position: int) -> dict:
    base, source = model.batched_aux(clean), model.batched_aux(corrupt)
    rc = base["layer_outputs"][layer]["resid_pre"]  # (B, T, d)
    rx = source["layer_outputs"][layer]["resid_pre"]
    resid = jnp.where((jnp.arange(rc.shape[1]) == position)[None, :, None], rx, rc)
    return _rerun(model, layer, base, {}, resid=resid)


def patch_resid(model: CheckpointModel, clean_inputs: Inputs, corrupt_inputs: Inputs, layer: int, position: int, *,
                return_cache: bool = False) -> Result:
    """Logits of the clean inputs with the residual stream entering block `layer`
    (`blocks.{layer}.hook_resid_pre`) at `position` taken from the corrupted run."""
    cfg = model.config
    _check_pair(clean_inputs, corrupt_inputs)
    layer = _check_index("layer", layer, cfg.n_layers, "layers")
    position = _check_index("position", position, _positions(model, clean_inputs), "positions")
    return _result(_patch_resid(model, clean_inputs, corrupt_inputs, layer, position), return_cache)


def _positions(model: CheckpointModel, inputs: Inputs) -> int:
    """Sequence length the model sees for a batch (without running it)."""
    shapes = eqx.filter_eval_shape(model.batched_aux, inputs)
    return _seq_len(shapes)
