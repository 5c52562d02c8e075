"""Batch compute over many runs on dask.distributed: one task per (run, block of steps).

The client plans every run, validates the programs and creates every store's variables and
coords up front (`store.ensure_variables`); then each task runs `compute_run` on its block of
steps, which computes only the missing cells. The scalar store keeps one chunk per (variable,
step) and writes a cell's values before its computed mask, so tasks own disjoint chunks, a
retried or concurrent task rewrites identical values, and a rerun computes only what is missing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import store

from ._compute import ComputeFn, model_template
from ._cost import CostEstimate, estimate_cost, format_estimate
from ._engine import (DEFAULT_STALL_TIMEOUT, ComputeReport, _validate_program, compute_run, default_block_size,
                      dropped_warnings)
from ._plan import ComputePlan, plan_runs

__all__ = ["BatchTask", "plan_runs", "partition", "compute_batch", "MAX_STEPS_PER_TASK"]

MAX_STEPS_PER_TASK = 256  # bounds the work a killed worker loses
MIN_STEPS_PER_TASK = 8  # each task compiles its program once (~1 s on CPU): keep tasks long enough
TASK_RETRIES = 2  # for exceptions; a worker's death is retried by dask (distributed.scheduler.allowed-failures)


@dataclasses.dataclass(frozen=True)
class BatchTask:
    """One unit of work: the missing cells of `types` at `steps` of one run."""

    run_dir: str
    types: tuple[str, ...]
    steps: tuple[int, ...]
    n_cells: int

    @property
    def label(self) -> str:
        return f"{self.run_dir} steps {self.steps[0]}-{self.steps[-1]}"


def partition(plans: Sequence[ComputePlan], steps_per_task: int) -> list[BatchTask]:
    """Split each run's missing steps into consecutive blocks of at most `steps_per_task` checkpoints."""
    if steps_per_task < 1:
        raise ValueError(f"--steps-per-task must be at least 1, got {steps_per_task}")
    tasks = []
    for plan in plans:
        names = tuple(t.name for t in plan.types)
        missing = {k: set(v.tolist()) for k, v in plan.missing.items()}
        all_steps = plan.steps.tolist()
        for i in range(0, len(all_steps), steps_per_task):
            block = tuple(int(s) for s in all_steps[i:i + steps_per_task])
            n = sum(len(missing[k].intersection(block)) for k in missing)
            tasks.append(BatchTask(str(Path(plan.run_dir).resolve()), names, block, n))
    return tasks


def default_steps_per_task(n_checkpoints: int, n_workers: int) -> int:
    """About two tasks per worker, but at least MIN and at most MAX checkpoints each."""
    return max(MIN_STEPS_PER_TASK, min(MAX_STEPS_PER_TASK, math.ceil(n_checkpoints / max(1, 2 * n_workers))))


def _validate(plans: Sequence[ComputePlan], block_size: int, options: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Trace each distinct program on shapes: a bad (user) type fails here, before anything is written."""
    import jax

    seen: set[tuple] = set()
    for plan in plans:
        key = (repr(plan.config), repr(options), tuple((t.name, getattr(plan.probes.get(t.name), "content_hash", None))
                                         for t in plan.types))
        if key in seen or not plan.n_cells:
            continue
        seen.add(key)
        param_shapes, _ = model_template(plan.config)
        names = [t.name for t in plan.types]
        fn = ComputeFn(names, plan.config, None, type_probes={n: plan.probes[n] for n in names},
                       options={k: v for k, v in (options or {}).items() if k in names}, block=block_size > 1)
        shapes = param_shapes if block_size == 1 else jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct((1 << (block_size - 1).bit_length(), *x.shape), x.dtype), param_shapes)
        _validate_program(fn, shapes)


def _prepare(plans: Sequence[ComputePlan]) -> dict[str, dict[str, str]]:
    """Create every store's variables and coords (staged copies for a --force on a changed
    definition) before any task writes; returns each run's write targets."""
    return {str(Path(plan.run_dir).resolve()): store.ensure_variables(plan.run_dir, plan.specs, plan.committed,
                                                                      force=plan.force)
            for plan in plans if plan.n_cells}


def _finish(plans: Sequence[ComputePlan], targets: Mapping[str, Mapping[str, str]], reports: Sequence[ComputeReport],
            ok: bool) -> None:
    """Swap staged copies in once every task of a run succeeded; drop them otherwise."""
    for plan, rep in zip(plans, reports):
        run_targets = targets.get(str(Path(plan.run_dir).resolve()))
        if not run_targets:
            continue
        if ok:
            rep.warnings.extend(dropped_warnings(plan, store.commit_replacements(plan.run_dir, run_targets)))
        else:
            store.discard_replacements(plan.run_dir, run_targets)


def _run_task(task: BatchTask, *, probe: str | None, block_size: int, plugins: tuple[str, ...],
              options: Mapping[str, Mapping[str, Any]] | None, topic: str | None, task_key: str,
              force: bool, targets: Mapping[str, str], stall_timeout: float | None,
              type_timing: bool = False) -> ComputeReport:
    """Worker side: load plugins, compute the task's missing cells, report progress as events."""
    from . import load_entry_point_plugins, load_plugin

    load_entry_point_plugins()
    for p in plugins:
        load_plugin(p)
    on_progress = None
    if topic is not None:
        from distributed import get_worker

        worker = get_worker()
        on_progress = lambda done, _total: worker.log_event(topic, [task_key, int(done)])  # noqa: E731
    return compute_run(task.run_dir, list(task.types), steps=",".join(map(str, task.steps)), probe=probe,
                       block_size=block_size, options=options, on_progress=on_progress, force=force,
                       targets=targets, stall_timeout=stall_timeout, type_timing=type_timing)


def _merge(out: ComputeReport, rep: ComputeReport) -> None:
    out.cells_computed += rep.cells_computed
    out.checkpoints_computed += rep.checkpoints_computed
    out.failed_steps.update(rep.failed_steps)
    out.warnings.extend(w for w in rep.warnings if w not in out.warnings)
    out.seconds += rep.seconds
    for name, sec in rep.type_seconds.items():
        out.type_seconds[name] = out.type_seconds.get(name, 0.0) + sec
    out.traces += rep.traces


def _in_process(plans: Sequence[ComputePlan], block_size: int, bar, stall_timeout: float | None,
                type_timing: bool = False) -> list[ComputeReport]:
    reports, offset = [], 0
    for plan in plans:
        if not plan.n_cells:
            reports.append(ComputeReport(plan.run_dir))
            continue
        rep = compute_run(plan.run_dir, [t.name for t in plan.types], plan=plan, block_size=block_size,
                          on_progress=lambda done, _t, offset=offset: bar.update(offset + done),
                          stall_timeout=stall_timeout, type_timing=type_timing)
        offset += plan.n_cells
        reports.append(rep)
    return reports


def _on_cluster(client, plans: Sequence[ComputePlan], tasks: Sequence[BatchTask], *, probe: str | None,
                block_size: int, plugins: tuple[str, ...], options: Mapping[str, Mapping[str, Any]] | None, bar,
                on_task_done: Callable[[BatchTask, ComputeReport], None] | None,
                targets: Mapping[str, Mapping[str, str]], stall_timeout: float | None,
                type_timing: bool = False) -> list[ComputeReport]:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    batch = uuid.uuid4().hex[:8]
    topic = f"scalars-progress-{batch}"
    done: dict[str, int] = {}
    lock = threading.Lock()

    def show(key: str, n: int) -> None:
        with lock:
            done[key] = max(done.get(key, 0), n)
            bar.update(sum(done.values()))

    client.subscribe_topic(topic, lambda event: show(str(event[1][0]), int(event[1][1])))
    force_of = {str(Path(p.run_dir).resolve()): p.force for p in plans}
    futures = {}
    for i, task in enumerate(tasks):
        key = f"scalars-compute-{batch}-{i}"
        fut = client.submit(_run_task, task, probe=probe, block_size=block_size, plugins=plugins, options=options,
                            topic=topic, task_key=key, key=key, retries=TASK_RETRIES, pure=False,
                            force=force_of[task.run_dir], targets=targets.get(task.run_dir, {}),
                            stall_timeout=stall_timeout, type_timing=type_timing)
        futures[fut] = (key, task)
    reports = {str(Path(p.run_dir).resolve()): ComputeReport(p.run_dir) for p in plans}
    errors: list[str] = []
    try:
        for fut in as_completed(futures, loop=client.loop):
            key, task = futures[fut]
            try:
                rep = fut.result()
            except KilledWorker:
                errors.append(f"{task.label}: its worker died {_allowed_failures()} times (out of memory?); "
                              "lower --block-size or --steps-per-task")
                continue
            except Exception as exc:  # noqa: BLE001 - collected, reported once at the end
                errors.append(f"{task.label}: {type(exc).__name__}: {exc}")
                continue
            _merge(reports[task.run_dir], rep)
            show(key, task.n_cells)
            if on_task_done:
                on_task_done(task, rep)
    finally:
        client.unsubscribe_topic(topic)
    _finish(plans, targets, list(reports.values()), ok=not errors)
    if errors:
        raise ValueError(f"{len(errors)} of {len(tasks)} tasks failed (the others are stored): "
                         f"{'; '.join(errors[:3])}; fix the cause and rerun the same command to compute the rest")
    return list(reports.values())


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures")) + 1


def estimate_batch(
    run_dirs: Sequence[str],
    types: Sequence[str],
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    block_size: int | None = None,
    plugins: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[CostEstimate]:
    """What `compute_batch` with these arguments would cost, per run: cells, FLOPs per type, and the
    compile and per-checkpoint seconds measured on the run's first checkpoints (nothing is stored)."""
    from . import load_plugin

    for p in plugins:
        load_plugin(str(Path(p).expanduser().resolve()))
    plans = plan_runs(run_dirs, types, all_types=all_types, steps=steps, probe=probe, force=force, options=options)
    return [estimate_cost(p, measure=True, block_size=block_size or default_block_size()) for p in plans]


def compute_batch(
    run_dirs: Sequence[str],
    types: Sequence[str],
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    block_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    steps_per_task: int | None = None,
    plugins: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_task_done: Callable[[BatchTask, ComputeReport], None] | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    type_timing: bool = False,
) -> list[ComputeReport]:
    """Compute the missing cells of `types` for every run in `run_dirs` (paths or globs); one report per run.
    `options` maps a type name to option overrides and `type_timing` asks for each type's share of
    the time, as for `compute_run`.

    Runs in this process for a single run (or `workers=1`), else on a LocalCluster of `workers`
    processes (default: one per core), or on the existing cluster at `scheduler`. Idempotent.
    """
    from . import load_plugin
    from .progress import CellProgress
    from trainer.executor import batch_client, usable_cores

    plugins = tuple(str(Path(p).expanduser().resolve()) for p in plugins)
    for p in plugins:
        load_plugin(p)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is not None and scheduler is not None:
        raise ValueError("--workers sizes a local cluster; with --scheduler the cluster's own workers are used, "
                         "so drop --workers")
    if block_size is not None and block_size < 1:
        raise ValueError(f"--block-size must be at least 1, got {block_size}")
    if steps_per_task is not None and steps_per_task < 1:
        raise ValueError(f"--steps-per-task must be at least 1, got {steps_per_task}")
    plans = plan_runs(run_dirs, types, all_types=all_types, steps=steps, probe=probe, force=force, options=options)
    total = sum(p.n_cells for p in plans)
    if log:
        log(f"{total} cells to compute over {len(plans)} run(s)")
        if all_types:  # what --all will cost, before it starts
            for plan in plans[:1]:
                if plan.n_cells:
                    for line in format_estimate(estimate_cost(plan)):
                        log(line)
    if total == 0:
        return [ComputeReport(p.run_dir) for p in plans]
    block_size = block_size or default_block_size()
    n_ckpts = sum(len(p.steps) for p in plans)
    n_workers = workers or usable_cores()
    tasks = partition(plans, steps_per_task or default_steps_per_task(n_ckpts, n_workers))
    if scheduler is None and (n_workers == 1 or len(tasks) == 1 or (workers is None and len(plans) == 1)):
        with CellProgress(total, enabled=progress) as bar:
            return _in_process(plans, block_size, bar, stall_timeout, type_timing)
    t0 = time.perf_counter()
    _validate(plans, block_size, options)
    with batch_client(workers=min(n_workers, len(tasks)), scheduler=scheduler, log=log) as client:
        if scheduler is not None and steps_per_task is None:  # size tasks for the cluster's workers
            tasks = partition(plans, default_steps_per_task(n_ckpts, sum(client.nthreads().values())))
        targets = _prepare(plans)
        if log:
            log(f"{len(tasks)} tasks (run x block of steps)")
        with CellProgress(total, enabled=progress) as bar:
            reports = _on_cluster(client, plans, tasks, probe=probe, block_size=block_size, plugins=plugins,
                                  options=options, bar=bar, on_task_done=on_task_done, targets=targets,
                                  stall_timeout=stall_timeout, type_timing=type_timing)
    if log:
        log(f"batch finished in {time.perf_counter() - t0:.1f}s")
    return reports
