"""Training throughput per preset, and the checkpoint archive's write overhead.

For each preset: optimizer steps per second, from the difference of a long and a short run so
that start-up cancels (XLA's persistent compilation cache is warmed first, in a temp folder).

Write overhead: one long induction-tiny run whose schedule alternates windows of W steps with a
checkpoint every 10 steps and windows of W steps with none. The wall time of every 10-step block
(from the run's log times) is compared between the two kinds of window, pair by pair (a dense
window and the sparse one after it), so machine noise slower than a window cancels; separate
runs per schedule differed by +-10 points from run to run on this machine. The first block of
each window is left out (the writer may still be finishing the previous window's checkpoints).
overhead = mean block time in dense windows / in sparse windows - 1 (goal <= 5%).
Usage: python benchmarks/bench_training.py [--overhead-steps 8000 --window 50 --repeats 3 (0: none)]
[--skip-presets]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from trainer.config import resolve_config
from trainer.train import train

PRESET_STEPS = {"induction-tiny": 300, "induction-gpt2": 200, "icl-bursty": 200, "icl-dynamics": 100, "transience": 20}
EVERY = 10  # the checkpoint spacing inside dense windows, and the logging interval


def run(preset: str, steps: int, schedule: str):
    """A fresh run in a temporary folder; returns its TrainResult (the folder is removed)."""
    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = resolve_config(preset, None, [f"train.steps={steps}", f"checkpoints.schedule={schedule}",
                                            f"train.eval_every={steps}", f"train.log_every={EVERY}"])
        return train(cfg, tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def block_overhead(steps: int, window: int) -> tuple[float, float, float, list[float], int]:
    """(dense ms, sparse ms per 10 steps, pooled overhead, per-pair overheads, checkpoints) of one run."""
    schedule = "+".join(f"window:{a}-{a + window - EVERY}:{EVERY}" for a in range(window, steps, 2 * window))
    result = run("induction-tiny", steps, schedule)
    times = np.array(result.log_times)  # (step, seconds since start) at every logged step
    blocks: dict[int, list[float]] = {}
    for (s0, t0), (_, t1) in zip(times[:-1], times[1:]):
        s0 = int(s0)
        if s0 >= 2 * window and s0 % window >= EVERY:  # warm-up windows and first blocks left out
            blocks.setdefault(s0 // window, []).append(t1 - t0)
    means = {w: float(np.mean(v)) for w, v in blocks.items()}
    pairs = [means[w] / means[w + 1] - 1 for w in means if w % 2 == 1 and w + 1 in means]
    dense = np.mean([t for w, v in blocks.items() if w % 2 == 1 for t in v])
    sparse = np.mean([t for w, v in blocks.items() if w % 2 == 0 for t in v])
    return dense * 1e3, sparse * 1e3, dense / sparse - 1, pairs, len(result.steps_saved)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--overhead-steps", type=int, default=8000)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-presets", action="store_true", help="only the write-overhead measurement")
    args = ap.parse_args()
    # compiling inside each timed run varied by +-0.5 s from run to run: warm XLA's cache first
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_training_xla_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    print(f"device={jax.devices()[0].platform}")
    for preset, steps in ({} if args.skip_presets else PRESET_STEPS).items():
        run(preset, 2, "every:2"), run(preset, steps, f"every:{steps}")  # compile into the cache
        short = run(preset, 2, "every:2").seconds
        long = run(preset, steps, f"every:{steps}").seconds
        print(f"{preset:16s} {(steps - 2) / (long - short):8.1f} steps/s (start-up and compile {short:.1f}s)")
    if args.repeats < 1:
        return
    print(f"write overhead: induction-tiny {args.overhead_steps} steps, windows of {args.window} steps "
          f"alternating a checkpoint every {EVERY} steps with none")
    pooled = []
    for i in range(args.repeats):
        dense, sparse, overhead, pairs, saved = block_overhead(args.overhead_steps, args.window)
        pooled.append(overhead)
        q1, q3 = np.percentile(pairs, [25, 75]) * 100
        print(f"  run {i + 1}: {saved} checkpoints; 10 steps take {dense:.1f} ms with saves, {sparse:.1f} ms "
              f"without: overhead {overhead * 100:.1f}% (per window pair: median {np.median(pairs) * 100:.1f}%, "
              f"quartiles {q1:.1f}..{q3:.1f}%)")
    print(f"archive write overhead = {np.median(pooled) * 100:.1f}% of training time (median of {args.repeats} "
          f"runs; goal <= 5%)")


if __name__ == "__main__":
    main()
