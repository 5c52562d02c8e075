"""Parameters as named leaves: the bridge between an Equinox model and the model-free archive.

A leaf's name is its attribute path with list indices as components, e.g.
`blocks.0.attn.W_Q`; `named_leaves` and `load_named_leaves` round-trip a model exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from ._config import ModelConfig
from ._transformer import Transformer


def _path_name(path) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return ".".join(parts)


def build_model(config: ModelConfig, *, seed: int = 0) -> Transformer:
    """A freshly initialised model for `config` (the init seed fully determines the weights)."""
    return Transformer(config, key=jax.random.key(seed))


def named_leaves(tree) -> dict[str, jax.Array]:
    """Every array leaf of a PyTree (model, optimizer state) keyed by its dotted path."""
    flat, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))
    return {_path_name(path): leaf for path, leaf in flat}


def named_shapes(param_shapes) -> dict[str, tuple[int, ...]]:
    """The shape of every leaf of a parameter PyTree (arrays or ShapeDtypeStructs) by its dotted path."""
    flat, _ = jax.tree_util.tree_flatten_with_path(param_shapes)
    return {_path_name(path): tuple(leaf.shape) for path, leaf in flat}


def load_named_leaves(template, leaves: dict[str, np.ndarray]):
    """`template` with its array leaves replaced by `leaves` (names, shapes and dtypes must match)."""
    params, static = eqx.partition(template, eqx.is_array)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    expected = [_path_name(path) for path, _ in flat]
    missing = [n for n in expected if n not in leaves]
    extra = sorted(set(leaves) - set(expected))
    if missing or extra:
        raise ValueError(
            f"parameter names do not match the model: missing {missing[:5]}, unexpected {extra[:5]}; "
            "check that the checkpoint belongs to this architecture"
        )
    new = []
    for (path, ref), name in zip(flat, expected):
        value = leaves[name]
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"parameter {name} has shape {tuple(value.shape)}, the model expects {tuple(ref.shape)}")
        new.append(jax.numpy.asarray(value, dtype=ref.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)


def leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype string) of every array leaf, for creating an archive."""
    return {name: (tuple(leaf.shape), str(leaf.dtype)) for name, leaf in named_leaves(tree).items()}


def params_from_named(param_shapes, leaves: dict[str, np.ndarray], *, stacked: int | None = None):
    """The parameter PyTree with the structure of `param_shapes` (arrays or ShapeDtypeStructs)
    filled from named leaves; with `stacked=n` every leaf carries a leading axis of n checkpoints."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(param_shapes)
    out = []
    for path, ref in flat:
        name = _path_name(path)
        if name not in leaves:
            raise ValueError(f"checkpoint has no parameter {name}; check that it belongs to this architecture")
        value = leaves[name]
        want = tuple(ref.shape) if stacked is None else (stacked, *ref.shape)
        if tuple(value.shape) != want:
            raise ValueError(f"parameter {name} has shape {tuple(value.shape)}, the model expects {want}")
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)
