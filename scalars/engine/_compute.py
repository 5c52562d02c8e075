"""The one compute entry point: `plan` a request, then `compute` it in this process or on dask.

`plan(runs, types, ...)` validates a request over one or many runs (paths or globs) and lists the
missing cells of each; nothing is written, and a bad run fails before any is computed.
`compute(runs, types, ..., executor=...)` plans the request (or takes plans already made) and
runs it: `InProcess()` computes run after run here, `Dask(...)` ships the plans to a local or
remote dask cluster in blocks of steps. Both are idempotent and compute only what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from ..registry import load_plugin
from ._batch import BatchTask, default_steps_per_task, partition, run_on_cluster, validate_programs
from ._cost import CostEstimate, estimate_cost, format_estimate
from ._plan import ComputePlan, plan_runs
from ._run import DEFAULT_STALL_TIMEOUT, ComputeReport, CellWriter, default_block_size, measure_first_block, run_plan
from ._run_probes import build_run_probe

__all__ = ["plan", "compute", "estimate", "InProcess", "Dask", "Executor"]

Runs = Union[str, Path, Sequence[Union[str, Path]]]
Progress = Callable[[int, int], None]  # (cells done, cells in all)


@dataclasses.dataclass(frozen=True)
class InProcess:
    """Compute every run in this process, one after another (the default). Each run's store is
    opened for writing even when nothing is missing (it tidies what a killed writer left)."""

    def run(self, plans: Sequence[ComputePlan], *, block_size: int, on_progress: Progress | None,
            log: Callable[[str], None] | None, on_task_done, plugins: tuple[str, ...], stall_timeout: float | None,
            type_timing: bool, write_cells: CellWriter | None) -> list[ComputeReport]:
        reports, offset = [], 0
        total = sum(p.n_cells for p in plans)
        for p in plans:
            progress = None if on_progress is None else \
                (lambda done, _t, offset=offset: on_progress(offset + done, total))
            reports.append(run_plan(p, block_size=block_size, on_progress=progress, stall_timeout=stall_timeout,
                                    type_timing=type_timing, write_cells=write_cells))
            offset += p.n_cells
        return reports


@dataclasses.dataclass(frozen=True)
class Dask:
    """Compute on dask.distributed: a LocalCluster of `workers` processes (default one per core) or
    the existing cluster at `scheduler`, in tasks of at most `steps_per_task` checkpoints of one
    run. A request that makes a single task (one run, `workers=1`) runs in this process instead."""

    workers: int | None = None
    scheduler: str | None = None
    steps_per_task: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.workers is not None and self.scheduler is not None:
            raise ValueError("--workers sizes a local cluster; with --scheduler the cluster's own workers are used, "
                             "so drop --workers")
        if self.steps_per_task is not None and self.steps_per_task < 1:
            raise ValueError(f"--steps-per-task must be at least 1, got {self.steps_per_task}")

    def run(self, plans: Sequence[ComputePlan], *, block_size: int, on_progress: Progress | None,
            log: Callable[[str], None] | None, on_task_done, plugins: tuple[str, ...], stall_timeout: float | None,
            type_timing: bool, write_cells: CellWriter | None) -> list[ComputeReport]:
        from trainer.executor import batch_client, usable_cores

        if not sum(p.n_cells for p in plans):  # nothing missing: no cluster, no store opened
            return [ComputeReport(p.run_dir) for p in plans]
        n_ckpts = sum(len(p.steps) for p in plans)
        n_workers = self.workers or usable_cores()
        tasks = partition(plans, self.steps_per_task or default_steps_per_task(n_ckpts, n_workers))
        if self.scheduler is None and (n_workers == 1 or len(tasks) == 1 or (self.workers is None and len(plans) == 1)):
            return InProcess().run(plans, block_size=block_size, on_progress=on_progress, log=log,
                                   on_task_done=on_task_done, plugins=plugins, stall_timeout=stall_timeout,
                                   type_timing=type_timing, write_cells=write_cells)
        if write_cells is not None:
            raise ValueError("write_cells is a hook of in-process computes; a cluster's workers use store.write_cells")
        t0 = time.perf_counter()
        validate_programs(plans, block_size)  # a bad (user) type fails before a cluster starts
        with batch_client(workers=min(n_workers, len(tasks)), scheduler=self.scheduler, log=log) as client:
            if self.scheduler is not None and self.steps_per_task is None:  # size tasks for the cluster's workers
                tasks = partition(plans, default_steps_per_task(n_ckpts, sum(client.nthreads().values())))
            if log:
                log(f"{len(tasks)} tasks (run x block of steps)")
            reports = run_on_cluster(client, plans, tasks, block_size=block_size, plugins=plugins,
                                     on_progress=on_progress, on_task_done=on_task_done, stall_timeout=stall_timeout,
                                     type_timing=type_timing)
        if log:
            log(f"batch finished in {time.perf_counter() - t0:.1f}s")
        return reports


Executor = Union[InProcess, Dask]


def _run_list(runs: Runs) -> list[str]:
    return [str(runs)] if isinstance(runs, (str, Path)) else [str(r) for r in runs]


def _load_plugins(plugins: Sequence[str | Path]) -> tuple[str, ...]:
    paths = tuple(str(Path(p).expanduser().resolve()) for p in plugins)
    for p in paths:
        load_plugin(p)
    return paths


def plan(
    runs: Runs,
    types: Sequence[str] = (),
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    build_probe: Callable = build_run_probe,
) -> list[ComputePlan]:
    """One validated plan per run of `runs` (a path, a glob, or a list of them); nothing is written.

    `types` are type or set names (`all_types`: every type the model supports, opt-in estimators
    excepted), `steps` a `--steps` spec, `probe` a probe name for every type, `force` recomputes
    stored cells, `options` maps a type name to option overrides. `build_probe(name, run_dir,
    info, config)` builds a run's probes, each once per request (wrap it to count or cache them).
    """
    return plan_runs(_run_list(runs), types, all_types=all_types, steps=steps, probe=probe, force=force,
                     options=options, build_probe=build_probe)


def compute(
    runs: Runs,
    types: Sequence[str] = (),
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    plans: Sequence[ComputePlan] | None = None,
    executor: Executor | None = None,
    block_size: int | None = None,
    plugins: Sequence[str | Path] = (),
    on_progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    on_task_done: Callable[[BatchTask, ComputeReport], None] | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    type_timing: bool = False,
    write_cells: CellWriter | None = None,
) -> list[ComputeReport]:
    """Compute and store the missing cells of `types` for every run of `runs`; one report per run.

    The request is planned as by `plan` (or `plans` are used as given), then run by `executor`
    (default `InProcess()`; `Dask(workers=..., scheduler=...)` for a cluster). `plugins` are type
    files every worker loads. `on_progress(done, total)` follows the cells; `log` gets one line per
    stage; `on_task_done(task, report)` is called per finished cluster task. A block that makes no
    progress for `stall_timeout` seconds raises StallError; `type_timing` splits the compute time over
    the types by their FLOPs (`report.type_seconds`); `write_cells` replaces `store.write_cells`
    for an in-process compute (for tests that inject a failing disk). Idempotent.
    """
    if block_size is not None and block_size < 1:
        raise ValueError(f"--block-size must be at least 1, got {block_size}")
    paths = _load_plugins(plugins)
    executor = executor or InProcess()
    if plans is None:
        plans = plan(runs, types, all_types=all_types, steps=steps, probe=probe, force=force, options=options)
    total = sum(p.n_cells for p in plans)
    if log:
        log(f"{total} cells to compute over {len(plans)} run(s)")
        if all_types:  # what --all will cost, before it starts
            for p in plans[:1]:
                if p.n_cells:
                    for line in format_estimate(estimate_cost(p)):
                        log(line)
    return executor.run(plans, block_size=block_size or default_block_size(), on_progress=on_progress, log=log,
                        on_task_done=on_task_done, plugins=paths, stall_timeout=stall_timeout,
                        type_timing=type_timing, write_cells=write_cells)


def estimate(
    runs: Runs,
    types: Sequence[str] = (),
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    block_size: int | None = None,
    plugins: Sequence[str | Path] = (),
) -> list[CostEstimate]:
    """What `compute` with these arguments would cost, per run: cells, FLOPs per type, and the
    compile and per-checkpoint seconds measured on the run's first checkpoints (nothing is stored)."""
    _load_plugins(plugins)
    block = block_size or default_block_size()
    out = []
    for p in plan(runs, types, all_types=all_types, steps=steps, probe=probe, force=force, options=options):
        est = estimate_cost(p)
        if p.n_cells:
            est.compile_seconds, est.seconds_per_checkpoint = measure_first_block(p, block)
        out.append(est)
    return out
