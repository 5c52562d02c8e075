"""Peak RSS of the engine over 64, 256 and 1024 checkpoints: the archive is streamed, never loaded whole.

Each count runs `scalars.compute` (the standard suite of issue 10 on size (a): scores + zero-ablated
loss of every head, 16 x 129-token probe) in a fresh subprocess over a run of that many
checkpoints, and reads the child's peak resident set size (getrusage ru_maxrss). Each count is
measured `--repeats` times (the peak depends on whether the two compute streams' temporaries
happen to coincide, which varies run to run); flat means every count's median within +-10% of
the 64-checkpoint median. Usage:
    python benchmarks/bench_memory.py [--counts 64 256 1024] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _engine_workload import SIZES, make_run

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {bench!r})
from _engine_workload import PROBE, SUITE
import scalars
t0 = time.perf_counter()
[report] = scalars.compute({run!r}, SUITE, probe=PROBE, force=True)
seconds = time.perf_counter() - t0
print(json.dumps({{"checkpoints": report.checkpoints_computed, "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(run: Path) -> dict:
    """Peak RSS (MiB) and time of scalars.compute over `run` in a fresh Python process."""
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), run=str(run))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="where run dirs are made (kept and reused)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_memory_"))
    print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores; size (a), standard suite")
    medians = []
    for n in args.counts:
        run = make_run(workdir / f"run_a_{n}", SIZES["a"], n)
        # on-disk bytes: a shard file is sparse until its slots are written
        size_mib = sum(f.stat().st_blocks * 512 for f in (run / "checkpoints.zarr").rglob("*") if f.is_file()) / 2**20
        runs = [measure(run) for _ in range(args.repeats)]
        peaks = sorted(r["peak_rss_mib"] for r in runs)
        seconds = min(r["seconds"] for r in runs)
        medians.append(peaks[len(peaks) // 2])
        print(f"{n:5d} checkpoints ({size_mib:6.0f} MiB archive): peak RSS median {medians[-1]:6.0f} MiB "
              f"(each run: {', '.join(f'{p:.0f}' for p in peaks)}), {seconds:6.1f} s ({seconds / n * 1e3:.0f} ms/ckpt)")
    worst = max(abs(m / medians[0] - 1) for m in medians)
    print(f"largest deviation from the {args.counts[0]}-checkpoint median: {100 * worst:.1f}% "
          f"({'flat' if worst <= 0.10 else 'NOT flat'}: target +-10%)")


if __name__ == "__main__":
    main()
