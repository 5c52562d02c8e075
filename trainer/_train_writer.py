"""The trainer's background writing: host copies of device state, the metrics flusher, and the
writer thread that stores metric rows, resume states and checkpoints strictly in step order at
the lowest CPU priority (so it takes the idle moments between a train step's ops).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import equinox as eqx
import jax
import numpy as np

import store

from .model import named_leaves

__all__: list[str] = []  # the trainer's own helpers


def _to_host(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in jax.device_get(named_leaves(tree)).items()}


class _HostCopy:
    """`_to_host` for PyTrees shaped like `template`, with the leaf names worked out once: naming
    the leaves by their paths cost five times the copy itself (1.4 ms vs 0.2 ms a checkpoint)."""

    def __init__(self, template):
        self.names = list(named_leaves(template))
        self.batched = jax.default_backend() != "cpu"  # on the CPU, np.asarray alone is cheapest

    def __call__(self, tree) -> dict[str, np.ndarray]:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if eqx.is_array(leaf)]
        if len(leaves) != len(self.names):
            raise ValueError(f"expected {len(self.names)} array leaves, got {len(leaves)}")
        if self.batched:  # one batch of device-to-host transfers
            leaves = jax.device_get(leaves)
        return dict(zip(self.names, map(np.asarray, leaves)))


class _MetricsFlusher:
    """Flushes a MetricsWriter when `every` seconds have passed (on the writer thread)."""

    def __init__(self, metrics: store.MetricsWriter, every: float):
        self.metrics, self.every, self.last = metrics, every, time.monotonic()

    def append(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, row in rows:
            self.metrics.append(step, row)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        self.metrics.flush()
        self.last = time.monotonic()


def _lower_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux; elsewhere a no-op). XLA splits each
    op of a train step over all cores, so a writer holding one core stalls the whole step; at low
    priority it takes the idle moments between ops instead (measured in benchmarks/RESULTS.md)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class _Writer(threading.Thread):
    """Background writer: metrics rows, resume state and checkpoints, strictly in submission order."""

    def __init__(self, run_dir: Path, archive: store.ArchiveWriter, metrics: store.MetricsWriter):
        super().__init__(daemon=True)
        self.run_dir, self.archive, self.metrics = run_dir, archive, metrics
        self.jobs: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.busy_s = 0.0

    def run(self) -> None:
        _lower_priority()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            t0 = time.perf_counter()
            try:
                job()
            except BaseException as exc:  # surfaced in the training thread
                self.error = exc
            self.busy_s += time.perf_counter() - t0

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self.jobs.put(job)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.jobs.put(None)
        self.join()
        self.check()
