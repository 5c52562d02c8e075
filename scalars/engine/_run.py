"""Executing one run's plan: load checkpoints once, compute, store.

`run_plan(plan)` takes the missing (type, step) cells a plan lists, builds (or reuses, from
`PROGRAM_CACHE`) one jitted program for the requested types, streams checkpoints from the archive in blocks
(the next block is read while the current one computes), and writes each (type, step) cell
to `scalars.zarr` (values first, computed mask last, so a crash never exposes a partial cell).
Checkpoints that fail their checksum are reported and skipped; the others are computed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

import store
from trainer.model import params_from_named

from ..registry import get_type, resolve_options
from ._cost import split_seconds, type_flops
from ._plan import ComputePlan
from ._program import ComputeFn, model_template

__all__ = ["run_plan", "ComputeReport", "StallError", "ProgramCache", "PROGRAM_CACHE", "CellWriter",
           "default_block_size", "measure_first_block", "DEFAULT_STALL_TIMEOUT"]


def default_block_size() -> int:
    """Checkpoints per compiled call: 1 on CPU (activations stay cache-sized), 16 on accelerators."""
    return 1 if jax.default_backend() == "cpu" else 16


# Host kernels of jaxlib's CPU runtime (LAPACK: eig, eigh, svd, qr, cholesky, lu, ...) that split a
# batch of matrices over XLA's intra-op thread pool and block their pool thread until the parts are
# done. When two programs run at once, such kernels can hold every pool thread waiting for parts
# that no free thread is left to run: a deadlock at 0% CPU inside jaxlib (0.10). Programs holding one
# are therefore run one at a time.
_POOL_BLOCKING_KERNEL = re.compile(r"custom_call\s*@(lapack_\w+)")
DEFAULT_STALL_TIMEOUT = 900.0  # seconds without a finished block before a compute is called stalled


class StallError(RuntimeError):
    """A compute made no progress for its stall timeout (its threads may still be stuck)."""


def pool_blocking_kernels(lowered: Any) -> list[str]:
    """Names of the CPU host kernels in a lowered program that block on XLA's intra-op pool."""
    return sorted(set(_POOL_BLOCKING_KERNEL.findall(lowered.as_text()))) if jax.default_backend() == "cpu" else []


def compute_streams() -> int:
    """Checkpoints computed concurrently (each its own call, from its own thread): 2 on CPU, where
    two calls fill the cores between one call's small ops (measured ~10-15% more checkpoints per
    second on 2 cores, benchmarks/RESULTS.md), 1 on accelerators (blocks are vmapped there)."""
    return 2 if jax.default_backend() == "cpu" else 1


@dataclasses.dataclass
class ComputeReport:
    run_dir: Path
    cells_computed: int = 0
    checkpoints_computed: int = 0
    failed_steps: dict[int, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    type_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # compute time split by FLOP share
    traces: int = 0  # compiled-program traces (one per distinct set of missing types and block shape)


def _validate_program(fn: ComputeFn, param_shapes) -> Any:
    """Trace the program on shapes only: a type that raises or returns a wrong shape fails here.
    Returns the lowered program."""
    try:
        return fn.trace_shapes(param_shapes)
    except ValueError:
        raise
    except Exception as exc:  # a user type's own error: name the type it came from
        raise ValueError(f"computing the requested types failed while tracing: {type(exc).__name__}: {exc}") from None


CellWriter = Callable[[Path, str, Sequence[int], np.ndarray], None]  # (run dir, target array, steps, values)


def run_plan(
    plan: ComputePlan,
    *,
    block_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    targets: Mapping[str, str] | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    type_timing: bool = False,
    write_cells: CellWriter | None = None,
) -> ComputeReport:
    """Compute and store the missing cells of one run's plan (in this process; the executors call it).

    Idempotent: after a crash a new plan holds only what is missing. `on_progress(cells_done,
    cells_total)` is called after every block. `targets` are the arrays to write (from
    `store.ensure_variables`) when the caller prepared the store itself; it then also commits or
    discards staged replacements. A block that takes longer than `stall_timeout` seconds raises
    StallError naming the types and steps; nothing half-written is left. With `type_timing`,
    `report.type_seconds` splits the compute time over the types by their XLA FLOP counts (each
    type lowered alone once: a fraction of a second per type, so off by default). `write_cells`
    stores one type's cells (default `store.write_cells`: values first, computed mask last).
    """
    t0 = time.perf_counter()
    report = ComputeReport(plan.run_dir)
    block_size = block_size or default_block_size()
    # one compiled program per distinct set of missing types (normally just one)
    groups: dict[tuple[str, ...], list[int]] = {}
    missing = {name: set(v.tolist()) for name, v in plan.missing.items()}
    for s in plan.steps.tolist():
        key = tuple(t.name for t in plan.types if s in missing.get(t.name, ()))
        groups.setdefault(key, []).append(s)
    param_shapes, _ = model_template(plan.config)
    programs, streams = {}, {}
    for names in groups:
        fn = PROGRAM_CACHE.get(names, plan, block_size > 1)
        lowered = _validate_program(fn, block_shapes(param_shapes, block_size))  # user types fail here, before
        programs[names] = fn                                                     # anything stored is touched
        streams[names] = 1 if block_size > 1 or pool_blocking_kernels(lowered) else compute_streams()
    own = targets is None
    if own:
        targets = store.ensure_variables(plan.run_dir, plan.specs, plan.committed, force=plan.force)
    try:
        if plan.n_cells:
            _compute_groups(plan, groups, programs, streams, targets, block_size, param_shapes, report,
                            on_progress, stall_timeout, type_timing, write_cells or store.write_cells)
    except BaseException:
        if own:
            store.discard_replacements(plan.run_dir, targets)
        raise
    if own:
        report.warnings.extend(dropped_warnings(plan, store.commit_replacements(plan.run_dir, targets)))
    report.seconds = time.perf_counter() - t0
    return report


def block_shapes(param_shapes, block_size: int):
    """The parameter shapes one compiled call takes: a checkpoint's, or a block's (padded to a power of two)."""
    if block_size == 1:
        return param_shapes
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((1 << (block_size - 1).bit_length(), *x.shape), x.dtype), param_shapes)


def measure_first_block(plan: ComputePlan, block_size: int) -> tuple[float, float]:
    """(compile seconds, seconds per checkpoint) of the fused program on the plan's first steps
    (read, computed twice and thrown away: nothing is stored)."""
    names = tuple(t.name for t in plan.types if t.name in plan.missing)
    steps = plan.steps.tolist()[:block_size]
    good, leaves, failed = store.read_verified_block(store.open_archive(plan.run_dir), steps)
    if not good:
        raise ValueError(f"the first checkpoint(s) of {plan.run_dir} cannot be read ({next(iter(failed.values()))}); "
                         "verify the run's archive")
    fn = PROGRAM_CACHE.get(names, plan, block_size > 1)
    shapes, _ = model_template(plan.config)
    t0 = time.perf_counter()
    _compute_block(fn, shapes, good, leaves, block_size > 1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    _compute_block(fn, shapes, good, leaves, block_size > 1)
    again = time.perf_counter() - t0
    return max(first - again, 0.0), again / len(good)


def dropped_warnings(plan: ComputePlan, dropped: Mapping[str, int]) -> list[str]:
    """One sentence per replaced type whose old cells outside the recomputed steps were dropped."""
    return [f"{name}: its definition changed, so {n} cell(s) of the old definition outside the recomputed "
            f"steps were dropped (not mixed with the new ones); compute the type at those steps to fill them"
            for name, n in dropped.items()]


def _compute_groups(plan: ComputePlan, groups: Mapping[tuple[str, ...], list[int]], programs: Mapping,
                    streams: Mapping[tuple[str, ...], int], targets: Mapping[str, str], block_size: int,
                    param_shapes, report: ComputeReport, on_progress: Callable[[int, int], None] | None,
                    stall_timeout: float | None, type_timing: bool, write_cells: CellWriter) -> None:
    """Stream each group's checkpoints in blocks (the next read while one computes) through its
    program; each group's wall time goes to its types in proportion to their FLOPs."""
    names_all = sorted({n for names in groups for n in names})
    costs = type_flops(plan, names_all) if type_timing and len(names_all) > 1 else None
    flops = {names: {n: costs[n] for n in names} for names in groups} if costs else {}
    total, done = plan.n_cells, 0
    reader = store.open_archive(plan.run_dir)
    n_workers = max(streams.values())
    loader = concurrent.futures.ThreadPoolExecutor(1)
    workers = concurrent.futures.ThreadPoolExecutor(n_workers)
    stalled = False
    try:
        with _CellWriter(plan, report, targets, write_cells) as writer:
            for names, group_steps in groups.items():
                t_group = time.perf_counter()
                fn = programs[names]
                blocks = [group_steps[i:i + block_size] for i in range(0, len(group_steps), block_size)]
                future = loader.submit(store.read_verified_block, reader, blocks[0])
                running: collections.deque = collections.deque()  # (steps, future of values), oldest first
                in_flight = 0  # the first block runs alone: it compiles the program once, for every stream
                for i in range(len(blocks) + 1):
                    if i < len(blocks):
                        good, leaves, failed = _wait(future, stall_timeout, plan, names, blocks[i], "reading")
                        if i + 1 < len(blocks):
                            future = loader.submit(store.read_verified_block, reader, blocks[i + 1])  # prefetch while computing
                        report.failed_steps.update(failed)
                        if good:
                            _warn_nonfinite(good, leaves, report)
                            running.append((good, workers.submit(_compute_block, fn, param_shapes, good, leaves,
                                                                 block_size > 1)))
                    while running and (len(running) > in_flight or i == len(blocks)):
                        steps_done = running[0][0]
                        values = _wait(running.popleft()[1], stall_timeout, plan, names, steps_done, "computing")
                        in_flight = streams[names] - 1
                        writer.put(names, steps_done, values)  # stored in the background, values then mask
                        report.checkpoints_computed += len(steps_done)
                        report.cells_computed += len(steps_done) * len(names)
                        done += len(steps_done) * len(names)
                        if on_progress:
                            on_progress(done, total)
                report.traces += fn.trace_count
                for name, sec in split_seconds(time.perf_counter() - t_group, flops.get(names, {})).items():
                    report.type_seconds[name] = report.type_seconds.get(name, 0.0) + sec
    except StallError:
        stalled = True
        raise
    finally:  # a stalled thread never returns: do not wait for it
        loader.shutdown(wait=not stalled, cancel_futures=True)
        workers.shutdown(wait=not stalled, cancel_futures=True)


def _wait(future: concurrent.futures.Future, timeout: float | None, plan: ComputePlan, names: Sequence[str],
          steps: Sequence[int], doing: str) -> Any:
    """The future's result, or StallError when it takes longer than `timeout` seconds; a failure at
    run time (a type's `eqx.error_if`, a host callback that raises) becomes one sentence."""
    span = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:  # before OSError: TimeoutError is one
        raise StallError(f"no progress for {timeout:g}s while {doing} {', '.join(names)} at step(s) {span} of "
                         f"{plan.run_dir}; nothing half-written was stored; a type that waits on something "
                         "that never comes (or a much slower machine) does this: fix the type, or raise "
                         "--stall-timeout") from None
    except jax.errors.JaxRuntimeError as exc:
        raise ValueError(f"{doing} {', '.join(names)} at step(s) {span} of {plan.run_dir} failed: "
                         f"{_runtime_reason(exc)}; the stored cells are as they were") from None


class ProgramCache:
    """Compiled programs kept across calls (runs of one architecture, a sweep's runs), most recently
    used last; `builds` counts the programs built (each compiles once), `clear()` empties it."""

    def __init__(self, size: int = 4):
        self.size, self.builds = size, 0
        self._programs: dict[tuple, ComputeFn] = {}

    def get(self, names: tuple[str, ...], plan: ComputePlan, block: bool) -> ComputeFn:
        """The ComputeFn for `names` on this plan's config and probes: reused, compile included, by a
        later call with the same types, options, probe contents and architecture."""
        options = {k: v for k, v in (plan.options or {}).items() if k in names}
        probes = tuple((n, None if plan.probes[n] is None else plan.probes[n].content_hash) for n in names)
        key = (tuple(get_type(n) for n in names), plan.config, probes,
               json.dumps(options, sort_keys=True, default=str), block, jax.default_backend())
        fn = self._programs.pop(key, None)
        if fn is None:
            fn = ComputeFn(list(names), plan.config, None, type_probes={n: plan.probes[n] for n in names},
                           options=options, block=block)
            self.builds += 1
        self._programs[key] = fn
        while len(self._programs) > self.size:
            self._programs.pop(next(iter(self._programs)))
        return fn

    def clear(self) -> None:
        self._programs.clear()

    def __len__(self) -> int:
        return len(self._programs)


PROGRAM_CACHE = ProgramCache()


def _compute_block(fn: ComputeFn, param_shapes, steps: list[int], leaves: dict, block: bool) -> dict[str, np.ndarray]:
    """The block's values, type name -> (len(steps), *type shape) (a padded block trimmed)."""
    if block:
        padded = _pad_block(leaves, len(steps))
        out = jax.device_get(fn(params_from_named(param_shapes, padded,
                                                  stacked=int(next(iter(padded.values())).shape[0]))))
        return {k: np.asarray(v)[:len(steps)] for k, v in out.items()}
    outs = jax.device_get([fn(params_from_named(param_shapes, {k: v[i] for k, v in leaves.items()}))
                           for i in range(len(steps))])
    return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}


def _runtime_reason(exc: BaseException) -> str:
    """The informative line of an XLA run-time error (an `eqx.error_if` message, a callback's exception)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # equinox puts its message after this marker
        if "EqxRuntimeError" in ln or ln.startswith("ValueError") or "Error:" in ln:
            return ln.split("INTERNAL: ")[-1].replace("_EquinoxRuntimeError: ", "")[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


class _CellWriter:
    """Stores computed cells from a background thread (values first, computed mask last, as
    `store.write_cells` does), coalescing the blocks that arrive while a write is in flight; its
    errors surface on the next `put` or at exit, and exit waits until everything is stored."""

    def __init__(self, plan: ComputePlan, report: ComputeReport, targets: Mapping[str, str], write_cells: CellWriter):
        self.plan, self.report, self.targets, self.write_cells = plan, report, targets, write_cells
        self.queue: list[tuple[tuple[str, ...], list[int], dict]] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.future: concurrent.futures.Future | None = None

    def put(self, names: tuple[str, ...], steps: list[int], values: dict) -> None:
        self.queue.append((names, list(steps), values))
        if self.future is None or self.future.done():
            self._flush()

    def _flush(self) -> None:
        if self.future is not None:
            self.future.result()
        batch, self.queue = self.queue, []
        self.future = self.pool.submit(self._write, batch) if batch else None

    def _write(self, batch) -> None:
        for name in dict.fromkeys(n for names, _, _ in batch for n in names):
            parts = [(steps, values[name]) for names, steps, values in batch if name in names]
            steps = [s for part_steps, _ in parts for s in part_steps]
            values = np.concatenate([v for _, v in parts])
            self.write_cells(self.plan.run_dir, self.targets[name], steps, values)
            _check_cells(self.plan, name, steps, values, self.report)

    def __enter__(self) -> "_CellWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._flush()  # what is queued
                if self.future is not None:
                    self.future.result()
            elif self.future is not None:
                concurrent.futures.wait([self.future])
        finally:
            self.pool.shutdown(wait=True)


def _check_cells(plan: ComputePlan, name: str, steps: list[int], values: np.ndarray, report: ComputeReport) -> None:
    """A type's own `check` on each computed cell (e.g. why an SGLD estimate is NaN) -> warnings."""
    dst = next(t for t in plan.types if t.name == name)
    if dst.check is None:
        return
    opts = resolve_options(dst, plan.options.get(name))
    for step, value in zip(steps, values):
        message = dst.check(int(step), np.asarray(value), opts)
        if message:
            report.warnings.append(f"{name} at step {step}: {message}")


def _pad_block(leaves: dict, n: int) -> dict:
    """Pad a short last block to a power of two so that few block shapes are ever compiled."""
    target = 1 << (n - 1).bit_length()
    if target == n:
        return leaves
    return {k: np.concatenate([v, np.repeat(v[-1:], target - n, axis=0)]) for k, v in leaves.items()}


def _warn_nonfinite(steps: list[int], leaves: dict, report: ComputeReport) -> None:
    for i, s in enumerate(steps):
        bad = [k for k, v in leaves.items() if not np.isfinite(v[i]).all()]
        if bad:
            report.warnings.append(f"checkpoint {s} has non-finite weights (e.g. {bad[0]}); its scalars are NaN")
