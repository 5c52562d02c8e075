"""Seconds per checkpoint of the `llc` type with the default SGLD budget: chains vmapped vs looped.

Model: the icl-regression preset (2 layers, 4 heads, d_model 64, MLP; about 0.1M parameters) on
its `regression_pool` probe (512 sequences of 16 pairs; the default budget is 4 chains x (20 burn-in
+ 80 draws) steps on minibatches of 8 sequences). Both sides are the engine's compiled program
(`make_compute_fn(["llc"])`) with `chain_batching` "vmap" or "map", warm (compile timed apart),
interleaved over the same checkpoints for several rounds. Also: `rllc` seconds per checkpoint, and
the spread of llc over SGLD seeds at the last checkpoint (one program, the key as input).
Usage: python benchmarks/bench_llc.py [--run RUN_DIR] [--checkpoints 3] [--rounds 3] [--seeds 8]
Without --run it trains the preset for 600 steps (about 30 s) to get non-trivial checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import scalars
import store
from scalars.types._llc import SGLD_OPTIONS, probe_loss_fn
from scalars.interventions._sgld import SGLDSettings, llc_from_losses, sgld_losses
from trainer.model import ModelConfig, build_model, load_named_leaves


def load_params(run: Path, step: int, config: ModelConfig):
    return eqx.filter(load_named_leaves(build_model(config), store.open_archive(run).load(step)), eqx.is_array)


def timed(fn, params) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(params))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="an icl-regression run (default: train one briefly)")
    ap.add_argument("--checkpoints", type=int, default=3, help="late checkpoints timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    run = args.run
    if run is None:
        from trainer.config import resolve_config
        from trainer.train import train

        run = Path(tempfile.mkdtemp()) / "run"
        print("training icl-regression for 600 steps ...")
        train(resolve_config("icl-regression", None, ["train.steps=600"]), run)
    info = store.read_run_json(run)
    config = ModelConfig.from_dict(info["model"])
    probe = scalars.engine.build_run_probe("regression_pool", run, info, config)
    steps = [int(s) for s in store.open_archive(run).steps[-args.checkpoints:]]
    params = [load_params(run, s, config) for s in steps]
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params[0]))
    print(f"model: {n_params} parameters; probe {probe.name}: {probe.batch_size} sequences; "
          f"default options {SGLD_OPTIONS}; jax {jax.__version__} on {jax.default_backend()}")

    fns = {b: scalars.make_compute_fn(["llc"], config, probe, options={"llc": {"chain_batching": b}})
           for b in ("vmap", "map")}
    fns["rllc (vmap)"] = scalars.make_compute_fn(["rllc"], config, probe)
    for name, fn in fns.items():
        print(f"compile + first call, {name}: {timed(fn, params[0]):.1f} s")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for p in params:
            for name, fn in fns.items():
                times[name].append(timed(fn, p))
    print(f"\nseconds per checkpoint over {args.rounds} rounds x {len(params)} checkpoints (best / median):")
    for name, ts in times.items():
        print(f"  {name:12s} {min(ts):6.2f} / {statistics.median(ts):6.2f}")
    ratio = statistics.median(times["map"]) / statistics.median(times["vmap"])
    print(f"llc chains looped / vmapped (median): {ratio:.2f}x")

    settings = SGLDSettings.from_options(SGLD_OPTIONS, probe.batch_size)
    arrays = {k: jnp.asarray(v) for k, v in probe.arrays.items()}
    static = eqx.partition(build_model(config), eqx.is_array)[1]

    @jax.jit
    def llc_for(p, key):
        w, loss_fn = probe_loss_fn(eqx.combine(p, static), probe.with_arrays(arrays))
        init, losses = sgld_losses(loss_fn, w, probe.batch_size, settings, key=key)
        return llc_from_losses(init, losses, settings.nbeta(probe.batch_size), n_params, settings.diverge_factor)

    values = [float(llc_for(params[-1], jax.random.key(s))) for s in range(args.seeds)]
    print(f"\nllc at step {steps[-1]} over seeds 0-{args.seeds - 1}: {np.round(values, 2).tolist()}; mean "
          f"{np.mean(values):.2f}, std {np.std(values):.2f} ({np.std(values) / abs(np.mean(values)):.1%})")


if __name__ == "__main__":
    main()
