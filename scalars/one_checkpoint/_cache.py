"""`run_with_cache`: a batch's activations under TransformerLens hook names, next to the raw PyTree.

`HOOKS` is the one table from a TransformerLens name to the path of that activation in the
`call_with_all_aux` PyTree (`{l}` is the layer) and the axis order that turns our per-head
layout (batch, head, pos, x) into TransformerLens's (batch, pos, head, x). A name exists for a
model when its path exists in the tree, so attention-only models have no `mlp.*` names and
only gated MLPs have `mlp.hook_pre_linear`. LayerNorm hooks hold the normalized output after the
LN weight and bias (the input to the next matmul; TransformerLens's `fold_ln` gives the same
role to `hook_normalized`). Masked attention scores are -1e30 where TransformerLens has -inf.
"""

from __future__ import annotations

import collections.abc
import difflib
from typing import Any, Iterator, NamedTuple

import equinox as eqx
import jax

from ._model import CheckpointModel, Inputs, batched_aux

__all__ = ["HOOKS", "Hook", "ActivationCache", "run_with_cache"]

HEAD_POS = (0, 2, 1, 3)  # (batch, head, pos, x) -> (batch, pos, head, x)


class Hook(NamedTuple):
    """Where a TransformerLens hook's value lives in the activation PyTree, and how to lay it out."""

    path: str  # dotted path in the batched `call_with_all_aux` tree; `{l}` is the layer
    axes: tuple[int, ...] | None = None  # transpose of the batched array, None to keep it


_BLOCK = "layer_outputs.{l}"
HOOKS: dict[str, Hook] = {
    "hook_embed": Hook("embed"),
    "hook_pos_embed": Hook("pos_embed"),
    "blocks.{l}.hook_resid_pre": Hook(f"{_BLOCK}.resid_pre"),
    "blocks.{l}.ln1.hook_scale": Hook(f"{_BLOCK}.ln1_output.scale"),
    "blocks.{l}.ln1.hook_normalized": Hook(f"{_BLOCK}.ln1_output.out"),
    "blocks.{l}.attn.hook_q": Hook(f"{_BLOCK}.attn_output.q", HEAD_POS),
    "blocks.{l}.attn.hook_k": Hook(f"{_BLOCK}.attn_output.k", HEAD_POS),
    "blocks.{l}.attn.hook_v": Hook(f"{_BLOCK}.attn_output.v", HEAD_POS),
    "blocks.{l}.attn.hook_attn_scores": Hook(f"{_BLOCK}.attn_output.scores"),
    "blocks.{l}.attn.hook_pattern": Hook(f"{_BLOCK}.attn_output.pattern"),
    "blocks.{l}.attn.hook_z": Hook(f"{_BLOCK}.attn_output.z", HEAD_POS),
    "blocks.{l}.attn.hook_result": Hook(f"{_BLOCK}.attn_output.result", HEAD_POS),
    "blocks.{l}.hook_attn_out": Hook(f"{_BLOCK}.attn_output.out"),
    "blocks.{l}.hook_resid_mid": Hook(f"{_BLOCK}.resid_mid"),
    "blocks.{l}.ln2.hook_scale": Hook(f"{_BLOCK}.ln2_output.scale"),
    "blocks.{l}.ln2.hook_normalized": Hook(f"{_BLOCK}.ln2_output.out"),
    "blocks.{l}.mlp.hook_pre": Hook(f"{_BLOCK}.mlp_output.pre"),
    "blocks.{l}.mlp.hook_pre_linear": Hook(f"{_BLOCK}.mlp_output.pre_linear"),
    "blocks.{l}.mlp.hook_post": Hook(f"{_BLOCK}.mlp_output.post"),
    "blocks.{l}.hook_mlp_out": Hook(f"{_BLOCK}.mlp_output.out"),
    "blocks.{l}.hook_resid_post": Hook(f"{_BLOCK}.resid_post"),
    "ln_final.hook_scale": Hook("ln_final_output.scale"),
    "ln_final.hook_normalized": Hook("ln_final_output.out"),
}


def _lookup(tree: Any, path: str) -> Any:
    """The entry at a dotted path (list indices as integers), or None where the tree has none."""
    node = tree
    for part in path.split("."):
        if isinstance(node, (list, tuple)):
            i = int(part)
            node = node[i] if i < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
        if node is None:
            return None
    return node


def _resolve(tree: dict) -> dict[str, Hook]:
    """Every hook name that exists in `tree`, with its concrete path (layers filled in), in
    TransformerLens's order: embeddings, block 0's hooks, block 1's, ..., the final LayerNorm."""
    n_layers = len(tree.get("layer_outputs", ()))
    templates = list(HOOKS)
    first = next(i for i, t in enumerate(templates) if "{l}" in t)
    per_block = [t for t in templates if "{l}" in t]
    sites = ([(t, None) for t in templates[:first]] + [(t, layer) for layer in range(n_layers) for t in per_block]
             + [(t, None) for t in templates[first:] if "{l}" not in t])
    names: dict[str, Hook] = {}
    for template, layer in sites:
        concrete = Hook(HOOKS[template].path.format(l=layer), HOOKS[template].axes)
        if _lookup(tree, concrete.path) is not None:
            names[template.format(l=layer)] = concrete
    return names


class ActivationCache(eqx.Module, collections.abc.Mapping):
    """Activations of one batch by TransformerLens name (`cache["blocks.1.attn.hook_pattern"]`).

    `tree` is the raw `call_with_all_aux` PyTree (leaves batched), the form the engine's types
    and `cache=` interventions use; `path(name)` says where a name lives in it. A PyTree itself,
    so it can be returned from a jitted function.
    """

    tree: dict

    def _names(self) -> dict[str, Hook]:
        return _resolve(self.tree)

    def __getitem__(self, name: str) -> jax.Array:
        hook = self._hook(name)
        value = _lookup(self.tree, hook.path)
        return value if hook.axes is None else value.transpose(hook.axes)

    def _hook(self, name: str) -> Hook:
        names = self._names()
        if name not in names:
            near = difflib.get_close_matches(str(name), list(names), n=3, cutoff=0.5)
            hint = f"nearest: {', '.join(near)}" if near else "see cache.keys()"
            raise KeyError(f"no activation named {name!r} in this cache; {hint}")
        return names[name]

    def path(self, name: str) -> str:
        """The dotted path of a hook name in `tree`, e.g. `layer_outputs.1.attn_output.pattern`."""
        return self._hook(name).path

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {', '.join(list(self)[:4])}, ...)"


def run_with_cache(model: CheckpointModel, inputs: Inputs) -> tuple[jax.Array, ActivationCache]:
    """(logits, cache) of a batch: TransformerLens's `model.run_with_cache(tokens)` for this model."""
    tree = batched_aux(model, inputs)
    return tree["logits"], ActivationCache(tree)
