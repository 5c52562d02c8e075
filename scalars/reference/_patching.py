"""Slow references for the patching types: one full forward per patch, cache interventions, python loops.

Every patch is `call_with_all_aux` of the whole model on the corrupted inputs with cache/cache_mask
entries for every layer's resid_pre, q, k, v, pattern, z (and MLP output), switched on by masks,
so one compiled program serves every patch (the hook-style workflow). Path patching is the
two-pass algorithm of Wang et al. 2022: pass 1 freezes every head and MLP at its corrupted value
but the clean sender and reads the receiver layer's input; pass 2 puts the receiver's recomputed
q, k or v into the corrupted run. Attribution references take one gradient per component.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..probes._pairs import check_metric, corrupt_inputs, metric_name
from ..interventions._patching import SIDES, pair_metric

__all__ = ["NaivePatcher", "naive_patching", "NAIVE_TYPES"]

_ATTN = ("q", "k", "v", "pattern", "z")


@eqx.filter_jit
def _forward(model, inputs, cache, mask):
    return jax.vmap(lambda x, c, m: model.call_with_all_aux(x, cache=c, cache_mask=m))(inputs, cache, mask)


@eqx.filter_jit
def _metric(model, inputs, cache, mask, pair_arrays, metric):
    return pair_metric(_forward(model, inputs, cache, mask)["logits"], _Arrays(pair_arrays), metric)


@eqx.filter_jit
def _metric_grad(model, inputs, cache, mask, pair_arrays, metric):
    pair = _Arrays(pair_arrays)
    return jax.grad(lambda c: pair_metric(_forward(model, inputs, c, mask)["logits"], pair, metric))(cache)


class _Arrays:
    """The answer arrays of a pair, shaped like a probe for `pair_metric` (traced inside the jit)."""

    def __init__(self, arrays):
        self.arrays, self.name = arrays, "pair"


class NaivePatcher:
    """Full-forward patching of one model on one pair (numpy caches, one forward per patch)."""

    def __init__(self, model, pair, metric: str | None = None):
        self.model, self.pair = model, pair
        self.metric = check_metric(metric or metric_name(pair), "naive patching")
        self.inputs = corrupt_inputs(pair)
        self.arrays = {k: jnp.asarray(pair.arrays[k]) for k in ("answer_pos", "answers", "wrong_answers")}
        self.clean = _forward(model, pair.inputs, None, None)
        self.corrupt = _forward(model, self.inputs, None, None)
        self.m_clean = float(pair_metric(self.clean["logits"], pair, self.metric))
        self.m_corrupt = float(pair_metric(self.corrupt["logits"], pair, self.metric))
        self.n_layers = len(self.clean["layer_outputs"])
        self.n_heads = self.clean["layer_outputs"][0]["attn_output"]["z"].shape[1]

    # -- caches -----------------------------------------------------------------------------
    def _act(self, run: dict, layer: int, name: str) -> np.ndarray:
        out = run["layer_outputs"][layer]
        if name == "resid_pre":
            return np.asarray(out["resid_pre"])
        if name == "mlp":
            return np.asarray(out["mlp_output"]["out"])
        return np.asarray(out["attn_output"][name])

    def blank(self) -> tuple[list[dict], list[dict]]:
        """(values, masks) with every entry present and switched off."""
        cache, mask = [], []
        for layer in range(self.n_layers):
            names = ["resid_pre", *_ATTN] + (["mlp"] if "mlp_output" in self.corrupt["layer_outputs"][layer] else [])
            cache.append({n: np.zeros_like(self._act(self.corrupt, layer, n)) for n in names})
            mask.append({n: np.zeros(v.shape, bool) for n, v in cache[-1].items()})
        return cache, mask

    @staticmethod
    def _tree(flat: list[dict]) -> dict:
        layers = []
        for entry in flat:
            d = {"resid_pre": entry["resid_pre"], "attn_output": {n: entry[n] for n in _ATTN}}
            if "mlp" in entry:
                d["mlp_output"] = {"out": entry["mlp"]}
            layers.append(d)
        return {"layer_outputs": layers}

    def run(self, cache, mask) -> dict:
        return _forward(self.model, self.inputs, self._tree(cache), self._tree(mask))

    def metric_of(self, cache, mask) -> float:
        return float(_metric(self.model, self.inputs, self._tree(cache), self._tree(mask), self.arrays, self.metric))

    def set(self, cache, mask, layer: int, name: str, value, where=(slice(None),)) -> None:
        cache[layer][name][where] = np.asarray(value)[where]
        mask[layer][name][where] = True

    # -- exact patching ---------------------------------------------------------------------
    def patch_resid(self) -> np.ndarray:
        n_pos = self._act(self.clean, 0, "resid_pre").shape[1]
        out = np.zeros((self.n_layers, n_pos))
        for layer in range(self.n_layers):
            for p in range(n_pos):
                cache, mask = self.blank()
                self.set(cache, mask, layer, "resid_pre", self._act(self.clean, layer, "resid_pre"), (slice(None), p))
                out[layer, p] = self.metric_of(cache, mask)
        return out

    def patch_head(self, what: str) -> np.ndarray:
        name = {"output": "z", "pattern": "pattern", "value": "v"}[what]
        out = np.zeros((self.n_layers, self.n_heads))
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                cache, mask = self.blank()
                self.set(cache, mask, layer, name, self._act(self.clean, layer, name), (slice(None), h))
                out[layer, h] = self.metric_of(cache, mask)
        return out

    def sender_input(self, src: int, g: int, dst: int) -> jnp.ndarray:
        """Pass 1: resid_pre of `dst` with every head and MLP before it frozen corrupted, sender clean."""
        cache, mask = self.blank()
        for layer in range(dst):
            self.set(cache, mask, layer, "z", self._act(self.corrupt, layer, "z"))
            if "mlp" in cache[layer]:
                self.set(cache, mask, layer, "mlp", self._act(self.corrupt, layer, "mlp"))
        self.set(cache, mask, src, "z", self._act(self.clean, src, "z"), (slice(None), g))
        return self.run(cache, mask)["layer_outputs"][dst]["resid_pre"]

    def _project(self, dst: int, resid, side: str):
        block = self.model.blocks[dst]
        return jax.vmap(lambda r: block.attn.project(block.ln1(r), side))(resid)

    def path_patch(self) -> np.ndarray:
        L, H = self.n_layers, self.n_heads
        out = np.full((L, H, L, H, len(SIDES)), np.nan)
        for dst in range(1, L):
            for src in range(dst):
                for g in range(H):
                    resid = self.sender_input(src, g, dst)
                    for s, side in enumerate(SIDES):
                        proj = self._project(dst, resid, side)
                        for h in range(H):  # pass 2: the receiver's side input replaced, the rest corrupted
                            cache, mask = self.blank()
                            self.set(cache, mask, dst, side, proj, (slice(None), h))
                            out[src, g, dst, h, s] = self.metric_of(cache, mask)
        return out

    # -- attribution ------------------------------------------------------------------------
    def grad_of(self, layer: int, name: str) -> np.ndarray:
        """d metric / d (layer's `name`) at the corrupted run: the entry cached, downstream recomputed."""
        cache, mask = self.blank()
        self.set(cache, mask, layer, name, self._act(self.corrupt, layer, name))
        grads = _metric_grad(self.model, self.inputs, self._tree(cache), self._tree(mask), self.arrays, self.metric)
        entry = grads["layer_outputs"][layer]
        return np.asarray(entry["resid_pre"] if name == "resid_pre" else entry["attn_output"][name])

    def attribution_resid(self) -> np.ndarray:
        return np.stack([((self._act(self.clean, l, "resid_pre") - self._act(self.corrupt, l, "resid_pre"))
                          * self.grad_of(l, "resid_pre")).sum((0, 2)) for l in range(self.n_layers)])

    def attribution_head(self, what: str) -> np.ndarray:
        name = {"output": "z", "pattern": "pattern", "value": "v"}[what]
        return np.stack([((self._act(self.clean, l, name) - self._act(self.corrupt, l, name))
                          * self.grad_of(l, name)).sum((0, 2, 3)) for l in range(self.n_layers)])

    def attribution_path(self) -> np.ndarray:
        """d metric / d (receiver's q, k or v), each from its own full-forward gradient, times the
        receiver's side input moved along the sender's clean-minus-corrupted output (a JVP)."""
        L, H = self.n_layers, self.n_heads
        out = np.full((L, H, L, H, len(SIDES)), np.nan)
        for dst in range(1, L):
            resid_x = jnp.asarray(self._act(self.corrupt, dst, "resid_pre"))
            for s, side in enumerate(SIDES):
                grad = self.grad_of(dst, side)  # (B, H, T, e)
                for src in range(dst):
                    delta = self._act(self.clean, src, "result") - self._act(self.corrupt, src, "result")
                    for g in range(H):
                        _, moved = jax.jvp(lambda r, side=side: self._project(dst, r, side), (resid_x,),
                                           (jnp.asarray(delta[:, g]),))
                        out[src, g, dst, :, s] = (np.asarray(moved) * grad).sum((0, 2, 3))
        return out


_EXACT = {
    "patch_resid": lambda p: p.patch_resid(),
    "patch_head_output": lambda p: p.patch_head("output"),
    "patch_head_pattern": lambda p: p.patch_head("pattern"),
    "patch_head_value": lambda p: p.patch_head("value"),
    "path_patch": lambda p: p.path_patch(),
}
_ATTRIBUTION = {
    "attribution_patch_resid": lambda p: p.attribution_resid(),
    "attribution_patch_head_output": lambda p: p.attribution_head("output"),
    "attribution_patch_head_pattern": lambda p: p.attribution_head("pattern"),
    "attribution_patch_head_value": lambda p: p.attribution_head("value"),
    "attribution_patch_path": lambda p: p.attribution_path(),
}
NAIVE_TYPES = (*_EXACT, *_ATTRIBUTION)


def naive_patching(name: str, model, pair, *, metric: str | None = None, normalize: bool = True,
                   min_gap: float = 0.1, patcher: NaivePatcher | None = None) -> np.ndarray:
    """The patching type `name` the slow way (reference for tests and benchmarks); options as the type's."""
    p = patcher or NaivePatcher(model, pair, metric)
    if name in _EXACT:
        diff = _EXACT[name](p) - p.m_corrupt
    elif name in _ATTRIBUTION:
        if p.metric == "accuracy":
            raise ValueError("attribution patching needs a differentiable metric; use loss or logit_diff")
        diff = _ATTRIBUTION[name](p)
    else:
        raise KeyError(f"no naive reference for {name!r}; known: {', '.join(NAIVE_TYPES)}")
    if not normalize:
        return diff
    gap = p.m_clean - p.m_corrupt
    return np.full_like(diff, np.nan) if abs(gap) < min_gap else diff / gap
