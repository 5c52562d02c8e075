"""Interventions with prefix reuse: pure functions of (model, probe, clean activations).

An ablation in layer l re-runs only blocks l.. from the clean `resid_pre` of layer l
(`Transformer.forward_from`), with a cache that replaces that layer's `z` (so its q, k and
pattern are dead code XLA removes) and, for the preserving variants, the clean `pattern` and/or
`v` of the layers after l. Heads of a layer go through `lax.map` (or `vmap`, `head_batching`).
`clean` is `call_with_all_aux` vmapped over the probe batch: every leaf has a leading axis B.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


__all__ = [
    "HeadBatching", "Preserve", "ABLATIONS", "probe_metrics", "map_heads", "ablation_value", "replace_heads",
    "preserve_cache", "run_from", "head_ablation_metrics", "layer_removal_metrics",
    "reconstituted_scores", "logit_lens_metrics", "default_head_batching",
]

HeadBatching = Literal["map", "vmap"]
Preserve = Literal[None, "pattern", "value", "pattern_and_value"]
PRESERVES = (None, "pattern", "value", "pattern_and_value")


def default_head_batching() -> str:
    """`map` on CPU (measured faster there: benchmarks/RESULTS.md), `vmap` on accelerators."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def probe_metrics(logits: Float[Array, "B T V"], probe) -> tuple[Array, Array]:
    """Mean loss and accuracy of batched logits on the probe: next-token over positions 0..S-2
    for token probes (TransformerLens `return_type="loss"`), the query for classifier probes; for
    regression probes the mean squared error over all K predictions (accuracy NaN: undefined)."""
    return probe.input_kind.metrics(logits, probe.arrays)


def map_heads(fn: Callable[[Array], object], n: int, head_batching: str):
    """`fn(h)` for h in 0..n-1, outputs stacked on a leading axis: lax.map or vmap."""
    hs = jnp.arange(n)
    if head_batching == "map":
        return jax.lax.map(fn, hs)
    if head_batching == "vmap":
        return jax.vmap(fn)(hs)
    raise ValueError(f"head_batching must be 'map' or 'vmap', got {head_batching!r}")


ABLATION_VALUES: dict[str, Callable[[Array], Array]] = {  # z (B, H, T, e) -> what a removed head's z becomes
    "zero": lambda z: jnp.zeros((1, z.shape[1], 1, z.shape[3]), z.dtype),
    "mean": lambda z: z.mean(axis=(0, 2))[None, :, None, :],  # pooled over sequences and positions
    "mean_per_position": lambda z: z.mean(axis=0)[None],  # over sequences, one mean per position
}
ABLATIONS = tuple(ABLATION_VALUES)


def ablation_value(z: Float[Array, "B H T e"], ablation: str) -> Float[Array, "1 H _ e"]:
    """What a removed head's z becomes (broadcasts against z): 0; its mean over the probe's
    sequences and positions (`mean`, (1, H, 1, e)); or its mean over sequences at each position
    (`mean_per_position`, (1, H, T, e))."""
    if ablation not in ABLATION_VALUES:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    return ABLATION_VALUES[ablation](z)


def replace_heads(z: Float[Array, "B H T e"], heads_mask: Array, value: Array) -> Float[Array, "B H T e"]:
    """z with the heads where `heads_mask` (H,) is True replaced by `value` (broadcast)."""
    return jnp.where(heads_mask[None, :, None, None], value, z)


def preserve_cache(clean: dict, after: int, preserve: Preserve) -> dict[int, dict]:
    """Cache entries holding the clean pattern and/or v of every layer after `after`."""
    if preserve not in PRESERVES:
        raise ValueError(f"preserve must be one of {PRESERVES}, got {preserve!r}")
    names = {None: (), "pattern": ("pattern",), "value": ("v",), "pattern_and_value": ("pattern", "v")}[preserve]
    entries = {}
    if not names:
        return entries
    for layer in range(after + 1, len(clean["layer_outputs"])):
        attn = clean["layer_outputs"][layer]["attn_output"]
        entries[layer] = {"attn_output": {n: attn[n] for n in names}}
    return entries


def run_from(model, layer: int, clean: dict, layer_entries: dict[int, dict]) -> Float[Array, "B T V"]:
    """Logits of blocks `layer`.. re-run from the clean resid_pre of `layer` with a (batched) cache."""
    resid = clean["layer_outputs"][layer]["resid_pre"]
    cache = {"layer_outputs": layer_entries}
    return jax.vmap(lambda r, c: model.forward_from(layer, r, cache=c)["logits"])(resid, cache)


def head_ablation_metrics(
    model, probe, clean: dict, *, preserve: Preserve = None, ablation: str = "zero", head_batching: str = "map"
) -> tuple[Float[Array, "layer head"], Float[Array, "layer head"]]:
    """Probe loss and accuracy with each single head removed (zero or mean ablation of its z)."""
    losses, accs = [], []
    for layer in range(len(clean["layer_outputs"])):
        z = clean["layer_outputs"][layer]["attn_output"]["z"]
        n_heads = z.shape[1]
        value = ablation_value(z, ablation)
        downstream = preserve_cache(clean, layer, preserve)

        def one(h, layer=layer, z=z, value=value, downstream=downstream, n_heads=n_heads):
            z_abl = replace_heads(z, jnp.arange(n_heads) == h, value)
            logits = run_from(model, layer, clean, {layer: {"attn_output": {"z": z_abl}}, **downstream})
            return probe_metrics(logits, probe)

        loss, acc = map_heads(one, n_heads, head_batching)
        losses.append(loss)
        accs.append(acc)
    return jnp.stack(losses), jnp.stack(accs)


def layer_removal_metrics(
    model, probe, clean: dict, *, ablation: str = "zero", preserve: Preserve = "pattern_and_value"
) -> tuple[Float[Array, " layer"], Float[Array, " layer"]]:
    """Probe loss and accuracy with all heads of each layer removed, later layers' clean
    patterns and values held (by default)."""
    losses, accs = [], []
    for layer in range(len(clean["layer_outputs"])):
        z = clean["layer_outputs"][layer]["attn_output"]["z"]
        z_abl = jnp.broadcast_to(ablation_value(z, ablation), z.shape)
        entries = {layer: {"attn_output": {"z": z_abl}}, **preserve_cache(clean, layer, preserve)}
        loss, acc = probe_metrics(run_from(model, layer, clean, entries), probe)
        losses.append(loss)
        accs.append(acc)
    return jnp.stack(losses), jnp.stack(accs)


def reconstituted_scores(
    model, clean: dict, side: str, score_fn: Callable[[Array], Array], *, head_batching: str = "map"
) -> Float[Array, "layer head src_layer src_head"]:
    """`score_fn` of each layer's attention recomputed from cached residuals with one earlier
    head's output removed from the query (`side="q"`), the key (`side="k"`) or both (`"qk"`)
    inputs (each side's LayerNorm recomputed).

    `score_fn` maps the batch-mean pattern (H, T, T) of a layer to per-head scores (H,).
    Entry [l, h, s, g] is dst head (l, h) with src head (s, g) removed; NaN where s >= l.
    """
    if side not in ("q", "k", "qk"):
        raise ValueError(f"side must be 'q', 'k' or 'qk', got {side!r}")
    outs = clean["layer_outputs"]
    n_layers = len(outs)
    n_heads = outs[0]["attn_output"]["z"].shape[1]
    full = jnp.full((n_layers, n_heads, n_layers, n_heads), jnp.nan, jnp.float32)
    for layer in range(1, n_layers):
        block = model.blocks[layer]
        resid = outs[layer]["resid_pre"]  # (B, T, d)
        x_clean = outs[layer]["ln1_output"]["out"]
        for src in range(layer):
            result = outs[src]["attn_output"]["result"]  # (B, H, T, d)

            def one(g, block=block, resid=resid, x_clean=x_clean, result=result):
                x_mod = jax.vmap(block.ln1)(resid - result[:, g])
                xq, xk = (x_mod if "q" in side else x_clean), (x_mod if "k" in side else x_clean)
                pattern = jax.vmap(block.attn.pattern_from)(xq, xk)  # (B, H, T, T)
                return score_fn(pattern.mean(0))  # (H,)

            scores = map_heads(one, n_heads, head_batching)  # (src_head, head)
            full = full.at[layer, :, src, :].set(scores.T)
    return full


def mixed_stream_scores(model, streams: dict[str, dict], query: str, key: str,
                        score_fn: Callable[[Array], Array]) -> Float[Array, "layer head"]:
    """`score_fn` of every layer's attention with its query side read from run `query`'s residual
    stream and its key side from run `key`'s (`streams`: run name -> batched activations, e.g.
    clean and corrupt), each side's LayerNorm and projection recomputed."""
    rows = []
    for layer, block in enumerate(model.blocks):
        xq = streams[query]["layer_outputs"][layer]["ln1_output"]["out"]
        xk = streams[key]["layer_outputs"][layer]["ln1_output"]["out"]
        rows.append(score_fn(jax.vmap(block.attn.pattern_from)(xq, xk).mean(0)))
    return jnp.stack(rows)


def logit_lens_metrics(model, probe, clean: dict) -> tuple[Float[Array, " layer"], Float[Array, " layer"]]:
    """Probe loss and accuracy of unembedding each layer's resid_post (final LN recomputed)."""
    losses, accs = [], []
    for out in clean["layer_outputs"]:
        logits = jax.vmap(lambda x: model.unembed(x, {}))(out["resid_post"])
        loss, acc = probe_metrics(logits, probe)
        losses.append(loss)
        accs.append(acc)
    return jnp.stack(losses), jnp.stack(accs)
