"""The README demo: what a new user runs first."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from rich.console import Console
from rich.tree import Tree

from trainer.model import ModelConfig, build_model

console = Console()


def activation_tree(r, label: str = "activations") -> Tree:
    """A rich tree of an activation dict: names and shapes."""
    tree = Tree(label)

    def add(node, value, name):
        if isinstance(value, dict):
            child = node.add(f"[bold]{name}[/]")
            for k in sorted(value):
                add(child, value[k], k)
        elif isinstance(value, list):
            child = node.add(f"[bold]{name}[/] (list of {len(value)})")
            for i, v in enumerate(value):
                add(child, v, f"[{i}]")
        else:
            node.add(f"{name}: {tuple(value.shape)} {value.dtype}")

    for k in sorted(r):
        add(tree, r[k], k)
    return tree


def run_demo(out: str) -> None:
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=64, n_ctx=64)
    model = build_model(cfg, seed=0)
    tokens = jax.random.randint(jax.random.key(0), (33,), 1, cfg.vocab_size)
    r = eqx.filter_jit(lambda m, t: m.call_with_all_aux(t))(model, tokens)
    console.print(activation_tree(r, f"call_with_all_aux on {len(tokens)} tokens"))
    console.print(f"logits {tuple(r['out'].shape)}, mean loss-free check: finite={bool(jnp.isfinite(r['out']).all())}")
