"""Training throughput per preset, and the checkpoint archive's write overhead.

For each preset: optimizer steps per second, from the difference of a long and a short run so
that compilation and start-up cancel. Overhead: induction-tiny with a checkpoint every 10 steps
vs only the last step, alternated over rounds in one process; overhead = (dense - sparse) /
(sparse - fixed start-up cost) (goal <= 5%). XLA's persistent compilation cache is on (in a temp
folder, warmed before timing): compiling inside each timed run varied by +-0.5 s from run to run
and swamped the difference being measured.
Usage: python benchmarks/bench_training.py [--overhead-steps 400 --rounds 3] [--skip-presets]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from trainer.config import resolve_config
from trainer.train import train

PRESET_STEPS = {"induction-tiny": 300, "induction-gpt2": 200, "icl-bursty": 200, "icl-dynamics": 100, "transience": 20}


def timed_run(preset: str, steps: int, schedule: str, extra: list[str] | None = None) -> tuple[float, float]:
    """(seconds of the training loop, seconds the background writer was busy) for one fresh run."""
    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = resolve_config(preset, None, [f"train.steps={steps}", f"checkpoints.schedule={schedule}",
                                            f"train.eval_every={steps}", *(extra or [])])
        result = train(cfg, tmp / "run", progress=False)
        return result.seconds, result.write_seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--overhead-steps", type=int, default=400)
    ap.add_argument("--skip-presets", action="store_true", help="only the write-overhead measurement")
    args = ap.parse_args()
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_training_xla_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    print(f"device={jax.devices()[0].platform}")
    for preset, steps in ({} if args.skip_presets else PRESET_STEPS).items():
        short, _ = timed_run(preset, 2, "every:2")
        long, _ = timed_run(preset, steps, f"every:{steps}")
        print(f"{preset:16s} {(steps - 2) / (long - short):8.1f} steps/s (start-up and compile {short:.1f}s)")
    dense, sparse, fixed, busy = [], [], [], []
    n = args.overhead_steps
    for schedule in ("every:2", f"every:{n}", "every:10"):  # warm the compilation cache
        timed_run("induction-tiny", 2 if schedule == "every:2" else n, schedule)
    for _ in range(args.rounds):
        fixed.append(timed_run("induction-tiny", 2, "every:2")[0])
        sparse.append(timed_run("induction-tiny", n, f"every:{n}")[0])
        d, w = timed_run("induction-tiny", n, "every:10")
        dense.append(d)
        busy.append(w)
    c, s, d = (float(np.median(x)) for x in (fixed, sparse, dense))
    print(f"induction-tiny {n} steps: start-up {c:.2f}s, last-step-only {s:.2f}s, "
          f"every 10 steps ({n // 10 + 1} checkpoints) {d:.2f}s")
    print(f"archive write overhead = {(d - s) / (s - c) * 100:.1f}% of training time (goal <= 5%); "
          f"background writer busy {np.median(busy):.2f}s")


if __name__ == "__main__":
    main()
