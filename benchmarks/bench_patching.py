"""Per-checkpoint time of the patching suite: the engine's one jitted program vs naive full-forward patching.

The suite is every exact patching type (patch_resid, patch_head_output/pattern/value, path_patch)
and its attribution twin on the `induction_pair` probe of a trained induction-tiny run. The fast
side is `make_compute_fn` (prefix reuse, one program per checkpoint; heads by lax.map and by vmap);
the naive side is one jitted full forward per patch with cache interventions (`NaivePatcher`, the
hook-style workflow), both warm (compiled before timing), interleaved over the same checkpoints.
Also prints the attribution-vs-exact Pearson correlation per type at the last checkpoint.
Usage: python benchmarks/bench_patching.py [--run RUN_DIR] [--checkpoints 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import scalars
import store
from scalars.reference._patching import NAIVE_TYPES, NaivePatcher
from trainer.model import ModelConfig, build_model, load_named_leaves

EXACT = NAIVE_TYPES[:5]
ATTRIBUTION = NAIVE_TYPES[5:]


def load_model(run: Path, step: int, config: ModelConfig):
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), eqx.filter_eval_shape(build_model, config))
    return load_named_leaves(zeros, store.open_archive(run).load(step))


def naive_suite(model, pair) -> dict[str, np.ndarray]:
    patcher = NaivePatcher(model, pair)
    return {n: scalars.reference.naive_patching(n, model, pair, patcher=patcher) for n in NAIVE_TYPES}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="a trained induction-tiny run (default: train one)")
    ap.add_argument("--checkpoints", type=int, default=3, help="late checkpoints timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run = args.run
    if run is None:
        from trainer.config import resolve_config
        from trainer.train import train

        run = Path(tempfile.mkdtemp()) / "run"
        print("training induction-tiny (about a minute) ...")
        train(resolve_config("induction-tiny"), run)
    info = store.read_run_json(run)
    config = ModelConfig.from_dict(info["model"])
    pair = scalars.engine.build_run_probe("induction_pair", run, info, config)
    steps = [int(s) for s in store.open_archive(run).steps[-args.checkpoints:]]
    models = [load_model(run, s, config) for s in steps]
    fast = {hb: scalars.make_compute_fn(NAIVE_TYPES, config, pair, head_batching=hb) for hb in ("map", "vmap")}

    def run_fast(hb):
        for m in models:
            jax.block_until_ready(fast[hb](eqx.filter(m, eqx.is_array)))

    def run_naive():
        for m in models:
            naive_suite(m, pair)

    t0 = time.perf_counter()
    run_fast("map")
    compile_s = time.perf_counter() - t0
    run_fast("vmap")
    run_naive()  # warm: the naive forwards are compiled once
    times: dict[str, list[float]] = {"fast_map": [], "fast_vmap": [], "naive": []}
    for _ in range(args.rounds):
        for name, fn in (("fast_map", lambda: run_fast("map")), ("fast_vmap", lambda: run_fast("vmap")),
                         ("naive", run_naive)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(models))
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {k: np.asarray(v) for k, v in fast["map"](eqx.filter(models[-1], eqx.is_array)).items()}
    ref = naive_suite(models[-1], pair)
    worst = max(float(np.nanmax(np.abs(out[n] - ref[n]))) for n in NAIVE_TYPES)
    print(f"run {run}: {config.n_layers} layers x {config.n_heads} heads, d_model {config.d_model}; probe "
          f"induction_pair {pair.batch_size} x {pair.seq_len}; checkpoints {steps}; backend {jax.default_backend()}")
    print(f"fast program compile + first checkpoint: {compile_s:.1f}s; max |fast - naive| = {worst:.2e}")
    for k, v in med.items():
        print(f"{k:10s} {v * 1e3:9.1f} ms / checkpoint")
    print(f"ratio naive / fast (lax.map heads): {med['naive'] / med['fast_map']:.1f}x; "
          f"naive / fast (vmap heads): {med['naive'] / med['fast_vmap']:.1f}x")
    rs = {}
    for e, a in zip(EXACT, ATTRIBUTION):
        ok = ~np.isnan(out[e])
        rs[e] = float(np.corrcoef(out[e][ok], out[a][ok])[0, 1])
    allx = np.concatenate([out[e][~np.isnan(out[e])] for e in EXACT])
    ally = np.concatenate([out[a][~np.isnan(out[a])] for a in ATTRIBUTION])
    print(f"attribution vs exact Pearson at step {steps[-1]}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in rs.items()) + f"; pooled {np.corrcoef(allx, ally)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
