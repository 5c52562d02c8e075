"""Running plans on dask.distributed: one task per (run, block of steps), the plans shipped to the workers.

The client plans every run, validates the programs and creates every store's variables and
coords up front (`store.ensure_variables`); each task carries its run's plan (types by name, so a
plugin's types resolve after the worker loads the plugin) and runs
`run_plan` on its block of steps: nothing is planned again on a worker. The scalar store keeps
one chunk per (variable, step) and writes a cell's values before its computed mask, so tasks own
disjoint chunks, a retried or concurrent task rewrites identical values, and a rerun computes only
what is missing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

import store

from ..registry import get_type, load_entry_point_plugins, load_plugin
from ._plan import ComputePlan
from ._program import model_template
from ._run import PROGRAM_CACHE, ComputeReport, _validate_program, block_shapes, dropped_warnings, run_plan

__all__ = ["BatchTask", "partition", "default_steps_per_task", "run_on_cluster", "MAX_STEPS_PER_TASK",
           "ship_plan", "unship_plan", "restrict_plan", "validate_programs"]


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


def validate_programs(plans: Sequence[ComputePlan], block_size: int) -> None:
    """Trace each distinct program on shapes: a bad (user) type fails here, before anything is written."""
    seen: set[tuple] = set()
    for plan in plans:
        key = (repr(plan.config), repr(plan.options), tuple((t.name, getattr(plan.probes.get(t.name), "content_hash", None))
                                         for t in plan.types))
        if key in seen or not plan.n_cells:
            continue
        seen.add(key)
        param_shapes, _ = model_template(plan.config)
        fn = PROGRAM_CACHE.get(tuple(t.name for t in plan.types), plan, block_size > 1)
        _validate_program(fn, block_shapes(param_shapes, block_size))


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


def ship_plan(plan: ComputePlan) -> ComputePlan:
    """The plan as it travels to a worker: its types by name (a plugin's functions need not pickle)."""
    return dataclasses.replace(plan, run_dir=Path(plan.run_dir).resolve(), types=[t.name for t in plan.types])


def unship_plan(shipped: ComputePlan) -> ComputePlan:
    """A shipped plan with its types looked up again (after the worker loaded the plugins)."""
    return dataclasses.replace(shipped, types=[get_type(n) for n in shipped.types])


def restrict_plan(plan: ComputePlan, steps: Sequence[int]) -> ComputePlan:
    """The part of `plan` at `steps`: its missing cells there, nothing else."""
    keep = np.asarray(sorted(steps), np.int64)
    missing = {k: np.intersect1d(v, keep) for k, v in plan.missing.items()}
    return dataclasses.replace(plan, missing={k: v for k, v in missing.items() if len(v)},
                               selected=np.intersect1d(plan.selected, keep))


def _run_task(shipped: ComputePlan, steps: tuple[int, ...], *, block_size: int, plugins: tuple[str, ...],
              topic: str | None, task_key: str, targets: Mapping[str, str], stall_timeout: float | None,
              type_timing: bool = False) -> ComputeReport:
    """Worker side: load plugins, run the shipped plan's cells at `steps`, report progress as events."""
    load_entry_point_plugins()
    for p in plugins:
        load_plugin(p)
    on_progress = None
    if topic is not None:
        from distributed import get_worker

        worker = get_worker()
        on_progress = lambda done, _total: worker.log_event(topic, [task_key, int(done)])  # noqa: E731
    return run_plan(restrict_plan(unship_plan(shipped), steps), block_size=block_size, on_progress=on_progress,
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


def run_on_cluster(client, plans: Sequence[ComputePlan], tasks: Sequence[BatchTask], *, block_size: int,
                   plugins: tuple[str, ...], on_progress: Callable[[int, int], None] | None,
                   on_task_done: Callable[[BatchTask, ComputeReport], None] | None,
                   stall_timeout: float | None, type_timing: bool = False) -> list[ComputeReport]:
    """Run `tasks` (programs already validated) on the cluster behind `client`; staged replacements are committed when every
    task of a run succeeded. One ValueError lists the tasks that failed (the others are stored)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    targets = _prepare(plans)
    batch = uuid.uuid4().hex[:8]
    topic = f"scalars-progress-{batch}"
    total = sum(p.n_cells for p in plans)
    done: dict[str, int] = {}
    lock = threading.Lock()

    def show(key: str, n: int) -> None:
        with lock:
            done[key] = max(done.get(key, 0), n)
            if on_progress:
                on_progress(sum(done.values()), total)

    client.subscribe_topic(topic, lambda event: show(str(event[1][0]), int(event[1][1])))
    by_dir = {str(Path(p.run_dir).resolve()): p for p in plans}
    # each task carries its run's plan (not scattered data: that dies with the worker holding it,
    # and a killed worker's tasks must be retried elsewhere)
    shipped = {d: ship_plan(p) for d, p in by_dir.items() if p.n_cells}
    futures = {}
    for i, task in enumerate(tasks):
        key = f"scalars-compute-{batch}-{i}"
        fut = client.submit(_run_task, shipped[task.run_dir], task.steps, block_size=block_size, plugins=plugins,
                            topic=topic, task_key=key, key=key, retries=TASK_RETRIES, pure=False,
                            targets=targets.get(task.run_dir, {}), stall_timeout=stall_timeout,
                            type_timing=type_timing)
        futures[fut] = (key, task)
    reports = {d: ComputeReport(p.run_dir) for d, p in by_dir.items()}
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
