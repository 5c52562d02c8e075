"""Activation, path and attribution patching on a paired probe, reusing the clean and corrupted runs.

Patching here is denoising: run the corrupted inputs, give one component its clean value, score
the pair metric. A patch in layer l re-runs only blocks l.. from the corrupted `resid_pre` of
layer l with that layer's `z` set, on the lean batched forward (`trainer.model.run_blocks`, as the
head ablations); heads and positions go through `map_heads` (lax.map or vmap). Path patching recomputes the receiver head from its
corrupted inputs with the sender's clean-minus-corrupted output added to one side (q, k or v)
only. Attribution patching is first order: (clean - corrupted activation) . d metric / d activation
at the corrupted run, every gradient from one forward and one backward. `clean`/`corrupt` are
`call_with_all_aux` outputs vmapped over the batch (leading axis B).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from trainer.model import batched_unsupported, block_with_z, make_cache_assign, run_blocks, unembed

from ._ablation import map_heads
from ..probes._pairs import check_metric

__all__ = [
    "SIDES", "HEAD_PATCHES", "pair_metric", "run_from_resid", "resid_patch_metrics", "head_patch_metrics",
    "path_patch_metrics", "attribution_grads", "attribution_resid", "attribution_heads", "attribution_paths",
    "logit_diff_attributions", "logit_diff_lens",
]

SIDES = ("q", "k", "v")
HEAD_PATCHES = ("output", "pattern", "value")


def _gather_pos(x: Float[Array, "B T ..."], pos) -> Float[Array, "B K ..."]:
    """x[b, pos[b, k]] for every b, k."""
    idx = pos.reshape(pos.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def pair_metric(logits: Float[Array, "B T V"], pair, metric: str) -> Float[Array, ""]:
    """The pair's metric on batched logits: mean over sequences and answer positions of the loss of
    the answer, the answer's logit minus the wrong answer's, or argmax accuracy."""
    check_metric(metric, f"paired probe '{pair.name}'")
    lp = _gather_pos(logits, pair.arrays["answer_pos"])  # (B, K, V)
    answers = pair.arrays["answers"][..., None]
    if metric == "loss":
        return -jnp.take_along_axis(jax.nn.log_softmax(lp, axis=-1), answers, axis=-1).mean()
    if metric == "logit_diff":
        wrong = pair.arrays["wrong_answers"][..., None]
        return (jnp.take_along_axis(lp, answers, -1) - jnp.take_along_axis(lp, wrong, -1)).mean()
    return (jnp.argmax(lp, axis=-1) == answers[..., 0]).astype(jnp.float32).mean()


def run_from_resid(model, layer: int, resid: Float[Array, "B T d"], z: Float[Array, "B H T e"] | None = None
                   ) -> Float[Array, "B T V"]:
    """Logits of blocks `layer`.. from batched residual streams, with that layer's heads' z set to `z`
    if given: the lean batched forward (`trainer.model.run_blocks`), or the per-example forward with
    a cache for an option the batched one does not compute (`batched_unsupported`)."""
    if batched_unsupported(model.config) is not None:
        cache = {"layer_outputs": {} if z is None else {layer: {"attn_output": {"z": z}}}}
        return jax.vmap(lambda r, c: model.forward_from(layer, r, cache=c)["logits"])(resid, cache)
    if z is not None:
        resid, layer = block_with_z(model.blocks[layer], resid, z), layer + 1
    return unembed(model, run_blocks(model, layer, resid))


def _attn(run: dict, layer: int) -> dict:
    return run["layer_outputs"][layer]["attn_output"]


def _map_over(fn, xs: Array, head_batching: str):
    """`fn(x)` for each x along the leading axis of `xs`: lax.map or vmap, as `map_heads`."""
    return jax.lax.map(fn, xs) if head_batching == "map" else jax.vmap(fn)(xs)


def _with_head(z: Array, h, z_new: Array) -> Array:
    """z (B, H, T, e) with head h taken from z_new."""
    return jnp.where((jnp.arange(z.shape[1]) == h)[None, :, None, None], z_new, z)


def _run_with_z(model, layer: int, corrupt: dict, z: Array) -> Array:
    resid = corrupt["layer_outputs"][layer]["resid_pre"]
    return run_from_resid(model, layer, resid, z)


# -- exact patching --------------------------------------------------------------------------
def resid_patch_metrics(model, pair, clean: dict, corrupt: dict, metric: str, head_batching: str = "map"
                        ) -> Float[Array, "layer pos"]:
    """Metric with the clean resid_pre of one (layer, position) put into the corrupted run. A position
    where both runs agree (e.g. before the first corrupted token) is the corrupted run itself: its
    forward is skipped (`lax.cond`; under vmap both branches run)."""
    out = []
    base = pair_metric(corrupt["logits"], pair, metric)
    for layer in range(len(clean["layer_outputs"])):
        rc, rx = clean["layer_outputs"][layer]["resid_pre"], corrupt["layer_outputs"][layer]["resid_pre"]
        n_pos = rc.shape[1]

        def patched(p, layer=layer, rc=rc, rx=rx, n_pos=n_pos):
            resid = jnp.where((jnp.arange(n_pos) == p)[None, :, None], rc, rx)
            return pair_metric(run_from_resid(model, layer, resid), pair, metric)

        def one(p, rc=rc, rx=rx, patched=patched):
            same = jnp.all(rc[:, p] == rx[:, p])
            return jax.lax.cond(same, lambda: base, lambda: patched(p))

        out.append(map_heads(one, n_pos, head_batching))
    return jnp.stack(out)


def patched_z(clean: dict, corrupt: dict, layer: int, what: str) -> Float[Array, "B H T e"]:
    """Every head's z with its output (`output`), only its pattern, or only its values clean."""
    ac, ax = _attn(clean, layer), _attn(corrupt, layer)
    if what == "output":
        return ac["z"]
    if what == "pattern":
        return jnp.einsum("bhqk,bhke->bhqe", ac["pattern"], ax["v"])
    if what == "value":
        return jnp.einsum("bhqk,bhke->bhqe", ax["pattern"], ac["v"])
    raise ValueError(f"head patch must be one of {', '.join(HEAD_PATCHES)}, got {what!r}")


def head_patch_metrics(model, pair, clean: dict, corrupt: dict, metric: str, what: str, head_batching: str = "map"
                       ) -> Float[Array, "layer head"]:
    """Metric with one head's output (or only its pattern, or only its values) clean in the corrupted run."""
    out = []
    for layer in range(len(clean["layer_outputs"])):
        zx, zc = _attn(corrupt, layer)["z"], patched_z(clean, corrupt, layer, what)

        def one(h, layer=layer, zx=zx, zc=zc):
            return pair_metric(_run_with_z(model, layer, corrupt, _with_head(zx, h, zc)), pair, metric)

        out.append(map_heads(one, zx.shape[1], head_batching))
    return jnp.stack(out)


def _attend(attn, q, k, v):
    """z (H, T, e) of one sequence from queries, keys and values."""
    pattern = jax.nn.softmax(attn.scores_from(q, k), axis=-1)
    return jnp.einsum("hqk,hke->hqe", pattern, v)


def receiver_z(block, resid_x: Array, ax: dict, delta: Array) -> list[Array]:
    """Every head's z of `block` with `delta` (B, T, d) added to the residual input of its q, k or v
    only (LayerNorm recomputed), the other inputs corrupted: one (B, H, T, e) array per side."""
    attn = block.attn
    x_mod = jax.vmap(block.ln1)(resid_x + delta)
    proj = {s: jax.vmap(lambda x, s=s: attn.project(x, s))(x_mod) for s in SIDES}
    return [jax.vmap(lambda q, k, v: _attend(attn, q, k, v))(proj["q"], ax["k"], ax["v"]),
            jax.vmap(lambda q, k, v: _attend(attn, q, k, v))(ax["q"], proj["k"], ax["v"]),
            jnp.einsum("bhqk,bhke->bhqe", ax["pattern"], proj["v"])]


def _senders(clean: dict, corrupt: dict, dst: int) -> Float[Array, "n B T d"]:
    """Clean-minus-corrupted output of every head before layer `dst`, flattened (src_layer, src_head)."""
    return jnp.concatenate([jnp.moveaxis(_attn(clean, s)["result"] - _attn(corrupt, s)["result"], 1, 0)
                            for s in range(dst)])


def path_patch_metrics(model, pair, clean: dict, corrupt: dict, metric: str, head_batching: str = "map"
                       ) -> Float[Array, "layer head dst_layer dst_head side"]:
    """Metric when sender head (layer, head)'s clean output reaches receiver (dst_layer, dst_head)
    only through the receiver's q, k or v input (everything else corrupted; blocks after the
    receiver recomputed). NaN where dst_layer <= layer."""
    outs = clean["layer_outputs"]
    n_layers, n_heads = len(outs), outs[0]["attn_output"]["z"].shape[1]
    n_sides = len(SIDES)
    full = jnp.full((n_layers, n_heads, n_layers, n_heads, n_sides), jnp.nan, jnp.float32)
    for dst in range(1, n_layers):
        block, ax = model.blocks[dst], _attn(corrupt, dst)
        resid_x = corrupt["layer_outputs"][dst]["resid_pre"]

        def sender(delta, dst=dst, block=block, ax=ax, resid_x=resid_x):
            zs = jnp.stack(receiver_z(block, resid_x, ax, delta))  # (side, B, H, T, e)

            def receiver(i):  # i = side * n_heads + receiver head
                z = _with_head(ax["z"], i % n_heads, zs[i // n_heads])
                return pair_metric(_run_with_z(model, dst, corrupt, z), pair, metric)

            return map_heads(receiver, n_sides * n_heads, head_batching).reshape(n_sides, n_heads).T

        deltas = _senders(clean, corrupt, dst)
        values = _map_over(sender, deltas, head_batching)  # (dst * H, dst_head, side)
        full = full.at[:dst, :, dst].set(values.reshape(dst, n_heads, n_heads, n_sides))
    return full


# -- attribution patching --------------------------------------------------------------------
def _eps_forward(model, inputs, eps: list[dict]) -> Float[Array, "T V"]:
    """Logits of one sequence with `eps` added to every block's resid_pre, q, k, v, pattern and z
    (so d logits / d eps at 0 are the total derivatives by those activations)."""
    resid = model.embed_input(inputs, make_cache_assign({}, None, None))
    for block, e in zip(model.blocks, eps):
        resid = resid + e["resid_pre"]
        attn = block.attn
        x = block.ln1(resid)
        q, k, v = (attn.project(x, s) + e[s] for s in SIDES)
        pattern = jax.nn.softmax(attn.scores_from(q, k), axis=-1) + e["pattern"]
        z = jnp.einsum("hqk,hke->hqe", pattern, v) + e["z"]
        resid = block.call_with_all_aux(resid, cache={"attn_output": {"z": z}})["out"]
    return model.unembed(resid, {})


def attribution_grads(model, pair, corrupt: dict, metric: str) -> tuple[Array, list[dict]]:
    """(corrupted metric, per layer {resid_pre, q, k, v, pattern, z: d metric / d activation}), batched;
    one forward and one backward."""
    if metric == "accuracy":
        raise ValueError("attribution patching needs a differentiable metric; accuracy has no gradient, use "
                         "metric loss or logit_diff")
    names = ("q", "k", "v", "pattern", "z")
    eps = [{"resid_pre": jnp.zeros_like(out["resid_pre"]),
            **{n: jnp.zeros_like(out["attn_output"][n]) for n in names}} for out in corrupt["layer_outputs"]]

    def metric_of(eps):
        logits = jax.vmap(lambda x, e: _eps_forward(model, x, e))(pair.corrupt_inputs, eps)
        return pair_metric(logits, pair, metric)

    return jax.value_and_grad(metric_of)(eps)


def attribution_resid(clean: dict, corrupt: dict, grads: list[dict]) -> Float[Array, "layer pos"]:
    """First-order change of the metric from patching each (layer, position)'s resid_pre."""
    return jnp.stack([((c["resid_pre"] - x["resid_pre"]) * g["resid_pre"]).sum((0, 2))
                      for c, x, g in zip(clean["layer_outputs"], corrupt["layer_outputs"], grads)])


def attribution_heads(clean: dict, corrupt: dict, grads: list[dict], what: str) -> Float[Array, "layer head"]:
    """First-order change from patching each head's z (`output`), pattern or values (v)."""
    name = {"output": "z", "pattern": "pattern", "value": "v"}[what]
    out = []
    for layer, g in enumerate(grads):
        diff = _attn(clean, layer)[name] - _attn(corrupt, layer)[name]
        out.append((diff * g[name]).sum((0, 2, 3)))
    return jnp.stack(out)


def attribution_paths(model, clean: dict, corrupt: dict, grads: list[dict], head_batching: str = "map"
                      ) -> Float[Array, "layer head dst_layer dst_head side"]:
    """First-order path effects: the sender's clean-minus-corrupted output pushed through the
    receiver layer's LayerNorm and q/k/v projection (a JVP), dotted with d metric / d q, k, v."""
    outs = clean["layer_outputs"]
    n_layers, n_heads = len(outs), outs[0]["attn_output"]["z"].shape[1]
    full = jnp.full((n_layers, n_heads, n_layers, n_heads, len(SIDES)), jnp.nan, jnp.float32)
    for dst in range(1, n_layers):
        block = model.blocks[dst]
        resid_x = corrupt["layer_outputs"][dst]["resid_pre"]

        def qkv(resid, block=block):
            x = jax.vmap(block.ln1)(resid)
            return tuple(jax.vmap(lambda xb, s=s: block.attn.project(xb, s))(x) for s in SIDES)

        def one(delta, qkv=qkv, resid_x=resid_x, grad=grads[dst]):
            _, tangents = jax.jvp(qkv, (resid_x,), (delta,))
            return jnp.stack([(t * grad[s]).sum((0, 2, 3)) for t, s in zip(tangents, SIDES)], axis=-1)

        values = _map_over(one, _senders(clean, corrupt, dst), head_batching)  # (dst * H, dst_head, side)
        full = full.at[:dst, :, dst].set(values.reshape(dst, n_heads, n_heads, len(SIDES)))
    return full


# -- direct logit attribution on the pair ----------------------------------------------------
def _logit_diff_direction(model, pair) -> Float[Array, "B K d"]:
    W_U = model.unembed_matrix  # (d, V)
    return W_U.T[pair.arrays["answers"]] - W_U.T[pair.arrays["wrong_answers"]]


def logit_diff_attributions(model, pair, clean: dict) -> Float[Array, "layer head"]:
    """Each head's direct contribution to answer-minus-wrong logit at the answer positions (clean run,
    final LayerNorm scale frozen at its clean value), averaged over sequences and positions."""
    direction = _logit_diff_direction(model, pair)
    pos, ln = pair.arrays["answer_pos"], model.ln_final
    out = []
    for layer_out in clean["layer_outputs"]:
        result = jax.vmap(lambda r: _gather_pos(r, pos), in_axes=1, out_axes=1)(layer_out["attn_output"]["result"])
        if ln.w is not None:
            scale = _gather_pos(clean["ln_final_output"]["scale"], pos)[:, None]  # (B, 1, K, 1)
            result = ln.linear_part(result, scale)  # centred (LayerNorm) or not (RMSNorm)
        out.append(jnp.einsum("bhkd,bkd->bh", result, direction).mean(0) / pos.shape[1])
    return jnp.stack(out)


def logit_diff_lens(model, pair, clean: dict) -> Float[Array, " layer"]:
    """Answer-minus-wrong logit difference of each layer's resid_post through the final LN and unembedding."""
    out = []
    for layer_out in clean["layer_outputs"]:
        logits = jax.vmap(lambda x: model.unembed(x, {}))(layer_out["resid_post"])
        out.append(pair_metric(logits, pair, "logit_diff"))
    return jnp.stack(out)


def normalised(diff: Any, gap: Array, normalize: bool = True, min_gap: float = 0.0) -> Array:
    """`diff / gap` (gap = clean - corrupt metric), NaN where |gap| < min_gap (the pair does not separate
    clean from corrupt, so no fraction of it is defined); `diff` unchanged when not normalising."""
    if not normalize:
        return jnp.asarray(diff)
    return jnp.where(jnp.abs(gap) < min_gap, jnp.nan, diff / gap)
