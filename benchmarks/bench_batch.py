"""Batch compute throughput (checkpoints/s) for 1 vs 2 dask workers, and in this process.

Trains R runs of the induction-tiny architecture (a sweep, in this process), then computes the
standard suite for every checkpoint of every run: in-process, on a LocalCluster of 1 worker and of
2 workers (each worker single-threaded XLA, the default), and 2 workers with XLA's default
multi-threaded Eigen pool (the oversubscription check). Clusters are started before the clock;
each configuration's stores are deleted before it runs; configurations alternate over rounds.
Usage: python benchmarks/bench_batch.py [--runs 4 --steps 200 --every 5 --rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SUITE = ["induction_score", "prev_token_score", "ablated_loss", "logit_lens_loss"]


def _clear(runs: list[str]) -> None:
    for r in runs:
        shutil.rmtree(os.path.join(r, "scalars.zarr"), ignore_errors=True)
        if os.path.exists(os.path.join(r, "scalars.zarr.lock")):
            os.remove(os.path.join(r, "scalars.zarr.lock"))


def _cluster(stack: contextlib.ExitStack, n: int, single_thread_xla: bool, cache_dir: str):
    from distributed import Client, LocalCluster

    from trainer.executor import worker_env

    env = worker_env()
    if not single_thread_xla:
        env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_cpu_multi_thread_eigen=false", "").strip()
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env,
                                               dashboard_address=":0", silence_logs=logging.ERROR))
    return stack.enter_context(Client(cluster, set_as_default=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import scalars
    from trainer.sweep import run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    stack = contextlib.ExitStack()
    try:
        t0 = time.perf_counter()
        results = run_sweep([f"seed=0..{args.runs - 1}"], out=str(tmp / "runs"), preset="induction-tiny",
                            overrides=[f"train.steps={args.steps}", f"checkpoints.schedule=every:{args.every}",
                                       f"train.eval_every={args.steps}"], workers=1)
        runs = [r.run_dir for r in results]
        n_ckpt = sum(r.checkpoints for r in results)
        print(f"trained {len(runs)} runs, {n_ckpt} checkpoints in {time.perf_counter() - t0:.1f}s; suite: {SUITE}")
        configs = {
            "in-process": None,
            "1 worker": (1, True),
            "2 workers": (2, True),
            "2 workers, multi-threaded XLA": (2, False),
        }
        clusters = {}
        for name, spec in configs.items():
            if spec is not None:
                clusters[name] = _cluster(stack, *spec, cache_dir=str(tmp / f"xla-{name.replace(' ', '_')}"))
        times: dict[str, list[float]] = {k: [] for k in configs}
        for rnd in range(args.rounds):
            for name in configs:
                _clear(runs)
                sched = clusters[name].scheduler.address if name in clusters else None
                t = time.perf_counter()
                reports = scalars.compute(runs, SUITE, executor=scalars.engine.Dask(scheduler=sched, workers=1 if sched is None else None))
                dt = time.perf_counter() - t
                assert sum(r.checkpoints_computed for r in reports) == n_ckpt
                times[name].append(dt)
                print(f"round {rnd}: {name:32s} {dt:6.1f}s  {n_ckpt / dt:6.1f} checkpoints/s")
        stack.close()
        best = {k: min(v) for k, v in times.items()}
        print(f"\nbest of {args.rounds} rounds ({n_ckpt} checkpoints, {len(runs)} runs; load average "
              f"{os.getloadavg()[0]:.1f}):")
        for name, dt in best.items():
            print(f"  {name:32s} {n_ckpt / dt:6.1f} checkpoints/s  (median {statistics.median(times[name]):.1f}s)")
        print(f"scaling 2 workers / 1 worker: {best['1 worker'] / best['2 workers']:.2f}x; "
              f"2 workers single- / multi-threaded XLA: "
              f"{best['2 workers, multi-threaded XLA'] / best['2 workers']:.2f}x; "
              f"1 worker / in-process: {best['in-process'] / best['1 worker']:.2f}x")
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
