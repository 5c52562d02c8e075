"""Does the default SGLD budget settle? Accuracy on planted losses and settling on a real run.

1. Planted losses with a known learning coefficient, each estimated with the given budget:
   a non-degenerate quadratic in d = 100 parameters (coefficient d/2 = 50; the exact
   unadjusted-Langevin expectation, which includes the localization and step-size biases, is
   printed beside it) and the realizable linear regression of tests/scalars/types/test_llc.py (d = 20).
2. The icl-regression preset (trained for its 2000 steps unless --run is given): `llc` and
   `sgld_diagnostics` at a few checkpoints for several budgets (burn_in + draws), side by side:
   the estimate, split R-hat, the chains' mean drift, the status (0 settled, 4 not settled) and
   seconds per checkpoint (compile excluded: the first checkpoint of each budget is timed apart).
Usage: python benchmarks/bench_llc_settle.py [--run RUN_DIR] [--steps 0,500,1000,2000]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import scalars
import store
from scalars.types._llc import SGLD_OPTIONS
from scalars.interventions._sgld import STATS, SGLDSettings, llc_from_losses, sgld_losses

BUDGETS = [(20, 80), (200, 200), (400, 400)]  # (burn_in, draws); the first is the old default


def ula_gaussian_llc(a, nbeta, gamma, eps) -> float:
    """Exact E[n beta (L - L*)] of unadjusted Langevin on 1/2 sum a_j z_j^2 with localization gamma."""
    p = nbeta * np.asarray(a) + gamma
    var = 1.0 / (p * (1 - eps * p / 4))
    return float(0.5 * nbeta * np.sum(np.asarray(a) * var))


def planted(burn_in: int, draws: int) -> list[str]:
    rows = []
    n, d = 512, 100
    s = SGLDSettings.from_options({**SGLD_OPTIONS, "burn_in": burn_in, "draws": draws}, n)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = (np.linspace(1500, 2500, d) - s.gamma) / s.nbeta(n)
    A = jnp.asarray(Q @ np.diag(a) @ Q.T, jnp.float32)
    w_star = jnp.asarray(rng.normal(size=d), jnp.float32)
    loss = lambda w, idx: 0.5 * (w - w_star) @ A @ (w - w_star) + 0.0 * idx.sum()  # noqa: E731
    t = time.perf_counter()
    init, losses = jax.jit(lambda w: sgld_losses(loss, w, n, s))(w_star)
    est = float(llc_from_losses(init, losses, s.nbeta(n), d, s.diverge_factor))
    exact = ula_gaussian_llc(a, s.nbeta(n), s.gamma, s.step_size)
    rows.append(f"| quadratic, d = 100 | {burn_in} + {draws} | {d / 2:.1f} | {exact:.2f} | {est:.2f} | "
                f"{100 * (est - d / 2) / (d / 2):+.1f}% | {time.perf_counter() - t:.1f} s |")
    n, d = 2048, 20
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d)) * math.sqrt(7.0)
    w0 = rng.normal(size=d)
    Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(X @ w0, jnp.float32)
    loss = lambda w, idx: 0.5 * jnp.mean((yj[idx] - Xj[idx] @ w) ** 2)  # noqa: E731
    s = SGLDSettings.from_options({**SGLD_OPTIONS, "burn_in": burn_in, "draws": draws, "batch_size": None,
                                   "chains": 16}, n)
    t = time.perf_counter()
    init, losses = jax.jit(lambda w: sgld_losses(loss, w, n, s))(jnp.asarray(w0, jnp.float32))
    est = float(llc_from_losses(init, losses, s.nbeta(n), d, s.diverge_factor))
    exact = ula_gaussian_llc(np.linalg.eigvalsh(X.T @ X / n), s.nbeta(n), s.gamma, s.step_size)
    rows.append(f"| linear regression, d = 20, full batch, 16 chains | {burn_in} + {draws} | {d / 2:.1f} | "
                f"{exact:.2f} | {est:.2f} | {100 * (est - d / 2) / (d / 2):+.1f}% | {time.perf_counter() - t:.1f} s |")
    return rows


def settle(run: Path, steps: list[int], burn_in: int, draws: int) -> list[str]:
    opts = {"burn_in": burn_in, "draws": draws}
    work = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(run, work)
    try:
        t = time.perf_counter()
        scalars.compute(work, ["llc", "sgld_diagnostics"], steps=str(steps[0]), options={"llc": opts, "sgld_diagnostics": opts})
        first = time.perf_counter() - t
        t = time.perf_counter()
        scalars.compute(work, ["llc", "sgld_diagnostics"], steps=",".join(map(str, steps[1:])), options={"llc": opts, "sgld_diagnostics": opts})
        per = (time.perf_counter() - t) / max(len(steps) - 1, 1)
        ds = store.open_scalars(work)
        rows = []
        for s in steps:
            d = {k: float(ds.sgld_diagnostics.sel(step=s, stat=k)) for k in STATS}
            rows.append(f"| {burn_in} + {draws} | {s} | {float(ds.llc.sel(step=s)):.1f} | {d['rhat']:.3f} | "
                        f"{d['mean_drift']:+.1f} | {int(d['status'])} | {per:.1f} s |")
        rows[0] = rows[0][:-1] + f"(first, with compile: {first:.1f} s) |"
        return rows
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="an icl-regression run (default: train the preset)")
    ap.add_argument("--steps", default="0,500,1000,2000")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}; default budget now burn_in={SGLD_OPTIONS['burn_in']}, "
          f"draws={SGLD_OPTIONS['draws']}")
    print("\n| planted loss | burn_in + draws | coefficient | exact ULA expectation | estimate | vs coefficient | "
          "seconds |\n|---|---|---|---|---|---|---|")
    for b in BUDGETS:
        for row in planted(*b):
            print(row, flush=True)
    run = args.run
    if run is None:
        from trainer.config import resolve_config
        from trainer.train import train

        run = Path(tempfile.mkdtemp()) / "run"
        print("\ntraining the icl-regression preset (2000 steps) ...", flush=True)
        train(resolve_config("icl-regression"), run)
    steps = [int(s) for s in args.steps.split(",")]
    info = json.loads((run / "run.json").read_text())
    print(f"\nrun {run} ({info['config']['task']['kind']}), probe regression_pool\n")
    print("| burn_in + draws | step | llc | split R-hat | mean drift | status | seconds per checkpoint |\n"
          "|---|---|---|---|---|---|---|")
    for b in BUDGETS:
        for row in settle(run, steps, *b):
            print(row, flush=True)


if __name__ == "__main__":
    main()
