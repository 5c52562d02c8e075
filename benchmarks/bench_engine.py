"""Per-checkpoint time of the standard suite: TransformerLens loop vs plain-JAX loop vs the engine.

Standard suite (issue 10): prev/dup/induction scores + zero-ablated loss of every head, probe
16 x (BOS + 64 random tokens repeated) = 129 tokens, vocab 512, GPT-2 blocks with MLP, sizes
(a) L=2 H=8 d=128 and (b) L=4 H=8 d=256, 64 checkpoints. All sides run in this one process:

1. TransformerLens 4.x bridge over HF GPT2LMHeadModel, per checkpoint (weights loaded each time);
   skipped, with a message, without the optional `bench` extra (torch, transformer-lens).
2. plain JAX: separate jitted calls per ablation, jit reused across checkpoints (warm).
3. the engine: `scalars.compute` over the run's zarr archive (loading, compile and writing included;
   "steady" is the per-checkpoint time after the first block, compile excluded).
4. a 2048^3 float32 matmul, repeated during the run: its best rate is the machine's peak here.

Every side's values are checked against the engine's stored cells (max abs difference printed).
GFLOP/s is on the FLOPs the engine's algorithm does (`suite_flops`, counted analytically), and
on the prefix-reuse count the issue defines. Usage:
    python benchmarks/bench_engine.py [--sizes a b] [--checkpoints 64] [--peer-checkpoints N]
        [--workdir DIR] [--threads 2]
torch's OpenMP threads are set to PASSIVE waiting (before torch loads): on a shared machine the
default spin-wait made the TL loop 5-10x slower and erratic, which would flatter the engine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (if any) starts its OpenMP pool

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import store  # noqa: E402
from _engine_peers import SCORES, JaxLoop, TransformerLensLoop, torch_available  # noqa: E402
from _engine_workload import PROBE, REPEAT, SIZES, SUITE, make_run, probe_tokens, suite_flops  # noqa: E402
import scalars  # noqa: E402

TOLERANCE = 1e-4


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n^3 float32 matmul (compiled once, best of `repeats`)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def time_engine(run: Path, n: int) -> dict[str, float]:
    """scalars.compute over every checkpoint (forced recompute): end-to-end and steady per checkpoint."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    report = scalars.compute(run, SUITE, probe=PROBE, force=True, on_progress=lambda done, total: stamps.append(time.perf_counter()))[0]
    total = time.perf_counter() - t0
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else total
    return {"per_ckpt": total / n, "steady": steady, "first": stamps[0] - t0, "traces": report.traces}


def max_diff(got: dict, want) -> float:
    return max(float(np.abs(np.asarray(got[k]) - want[k].values).max()) for k in SUITE)


def bench_size(name: str, args, peaks: list[float]) -> dict:
    config = SIZES[name]
    n = args.checkpoints
    run = make_run(args.workdir / f"run_{name}_{n}", config, n)
    steps = [int(s) for s in store.open_archive(run).steps]
    peer_steps = steps[:: max(1, n // args.peer_checkpoints)][: args.peer_checkpoints]
    tokens = probe_tokens(config)
    print(f"\n== size ({name}): L={config.n_layers} H={config.n_heads} d={config.d_model} d_mlp={config.mlp_width} "
          f"V={config.vocab_size}; {n} checkpoints, peers on {len(peer_steps)}")
    res = {"size": name}
    peaks.append(matmul_peak())
    engine = time_engine(run, n)
    print(f"engine: {engine['per_ckpt'] * 1e3:.0f} ms/ckpt end to end ({engine['first']:.1f} s to the first block, "
          f"compile included), steady {engine['steady'] * 1e3:.0f} ms/ckpt, traces {engine['traces']}")
    stored = store.open_scalars(run)
    reader = store.open_archive(run)

    if torch_available() and not args.skip_tl:
        from trainer.interop.hf.gpt2 import export_hf

        hf_dirs = []
        for s in peer_steps:  # export is setup, not timed: the peer's users start from HF checkpoints
            d = args.workdir / f"hf_{name}_{n}" / f"step_{s}"
            if not d.exists():
                export_hf(run, s, d)
            hf_dirs.append(d)
        tl = TransformerLensLoop(config, tokens, REPEAT, args.threads)
        tl(hf_dirs[0])  # warm: imports, first-call allocations
        t0 = time.perf_counter()
        diffs = [max_diff(tl(d), stored.sel(step=s)) for s, d in zip(peer_steps, hf_dirs)]
        res["tl"] = (time.perf_counter() - t0) / len(peer_steps)
        print(f"TransformerLens loop: {res['tl'] * 1e3:.0f} ms/ckpt (torch {args.threads} threads), "
              f"max |TL - engine| {max(diffs):.1e}{'' if max(diffs) < TOLERANCE else '  MISMATCH'}")
    else:
        print("TransformerLens loop: skipped (install the optional extra: pip install -e '.[bench]', torch first)")
    peaks.append(matmul_peak())

    loop = JaxLoop(config, tokens, REPEAT)
    loop(reader.load(peer_steps[0]))  # warm: compile once, reused for every checkpoint
    t0 = time.perf_counter()
    diffs = [max_diff(loop(reader.load(s)), stored.sel(step=s)) for s in peer_steps]
    res["jax"] = (time.perf_counter() - t0) / len(peer_steps)
    print(f"JAX loop (jitted call per ablation): {res['jax'] * 1e3:.0f} ms/ckpt, max |loop - engine| "
          f"{max(diffs):.1e}{'' if max(diffs) < TOLERANCE else '  MISMATCH'}")
    peaks.append(matmul_peak())

    again = time_engine(run, n)  # bracket the peers: the machine's load drifts
    print(f"engine again: {again['per_ckpt'] * 1e3:.0f} ms/ckpt end to end, steady {again['steady'] * 1e3:.0f} ms/ckpt")
    res["engine"] = min(engine["per_ckpt"], again["per_ckpt"])
    res["steady"] = min(engine["steady"], again["steady"])
    peaks.append(matmul_peak())
    peak = max(peaks)

    flops = suite_flops(config)
    res.update(flops=flops, peak=peak)
    print(f"matmul peak {peak:.0f} GFLOP/s (best 2048^3 float32 matmul of {len(peaks)} in this run)")
    for label, key in (("algorithm", "total"), ("prefix-reuse", "prefix_reuse")):
        rate = flops[key] / res["steady"] / 1e9
        print(f"engine {label} FLOPs {flops[key] / 1e9:.1f} G/ckpt -> {rate:.0f} GFLOP/s steady = "
              f"{100 * rate / peak:.0f}% of peak")
    for side in ("tl", "jax"):
        if side in res:
            print(f"ratio {side} / engine: {res[side] / res['engine']:.2f}x end to end, "
                  f"{res[side] / res['steady']:.2f}x steady")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["a", "b"], choices=sorted(SIZES))
    ap.add_argument("--checkpoints", type=int, default=64)
    ap.add_argument("--peer-checkpoints", type=int, default=None, help="checkpoints the two peers run (default all)")
    ap.add_argument("--workdir", type=Path, default=None, help="where run dirs are made (kept and reused)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the TL peer")
    ap.add_argument("--skip-tl", action="store_true")
    args = ap.parse_args()
    args.peer_checkpoints = min(args.peer_checkpoints or args.checkpoints, args.checkpoints)
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_engine_"))
    versions = {"jax": jax.__version__, "numpy": np.__version__}
    if torch_available():
        import torch
        import transformers

        versions.update(torch=torch.__version__, transformers=transformers.__version__,
                        transformer_lens=importlib.metadata.version("transformer-lens"))
    print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, backend {jax.default_backend()}, "
          f"{versions}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load {os.getloadavg()[0]:.1f}")
    peaks: list[float] = []
    for name in args.sizes:
        bench_size(name, args, peaks)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
