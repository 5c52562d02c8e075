"""The compute engine over a run: which cells are missing, load checkpoints once, compute, store.

`compute_run(run_dir, types)` plans the work (types x selected steps not yet computed), builds
one jitted program for the requested types, streams checkpoints from the archive in blocks
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
from trainer.model import ModelConfig, named_shapes, params_from_named

from ._compute import ComputeFn, check_types, model_template
from ._cost import split_seconds, type_flops
from ._registry import DerivedScalarType, expand_type_names, get_type, resolve_options, type_coords
from ._run_probes import build_run_probe, resolve_probe_name
from ._steps import select_steps

ENGINE_VERSION = "1"


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
class ComputePlan:
    """What `compute_run` will do: per type, the steps whose cells are missing."""

    run_dir: Path
    config: ModelConfig
    types: list[DerivedScalarType]
    probes: dict[str, Any]  # probe name -> Probe
    missing: dict[str, np.ndarray]  # type name -> steps to compute
    selected: np.ndarray
    specs: list = dataclasses.field(default_factory=list)  # store.VariableSpec per type
    committed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    force: bool = False
    options: dict = dataclasses.field(default_factory=dict)  # type name -> option overrides

    @property
    def n_cells(self) -> int:
        return int(sum(len(v) for v in self.missing.values()))

    @property
    def steps(self) -> np.ndarray:
        if not self.missing:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate([np.asarray(v, np.int64) for v in self.missing.values()]))


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


def load_run_model_config(run_dir: str | Path) -> tuple[dict, ModelConfig]:
    """run.json content and the model config of a run directory."""
    info = store.read_run_json(run_dir)
    if "model" not in info:
        raise ValueError(f"run '{run_dir}' has no model config in run.json; it was not written by this package")
    return info, ModelConfig.from_dict(info["model"])


def _variable_spec(dst: DerivedScalarType, config: ModelConfig, probe,
                   options: Mapping[str, Any] | None = None) -> store.VariableSpec:
    """The stored variable of a type: dims, coords and attrs (a type with options stores its
    resolved options as a JSON string, so cells computed with other options are refused)."""
    extra = {"options": json.dumps(resolve_options(dst, options), sort_keys=True, default=str)} if dst.options else {}
    if dst.fingerprint is not None:
        extra["definition"] = dst.fingerprint
    if dst.nan_means:
        extra["nan_means"] = dst.nan_means
    return store.VariableSpec(
        name=dst.name,
        dims=tuple(dst.dims),
        coords=type_coords(dst, config, probe),
        attrs={
            "description": dst.description,
            "units": dst.units,
            "version": str(dst.version),
            "engine_version": ENGINE_VERSION,
            "probe": probe.name if probe is not None else "none (weights only)",
            "probe_hash": probe.content_hash if probe is not None else "none",
            **extra,
        },
    )


def plan_compute(
    run_dir: str | Path,
    types: Sequence[str | DerivedScalarType],
    *,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    built_probes: Mapping[str, Any] | None = None,
) -> ComputePlan:
    """Validate the request and list the missing cells; nothing is written. `options` maps a type
    name to option overrides (validated here, recorded in the stored attrs); `built_probes` are
    probes already built for this run, by name (each probe is built once per request)."""
    run_dir = Path(run_dir)
    info, config = load_run_model_config(run_dir)
    if not types:
        raise ValueError("no types requested; pass --type NAME (see `scalars types`) or --all")
    dsts = [get_type(t) for t in expand_type_names(types)]
    check_types(dsts, config)
    options = dict(options or {})
    stray = sorted(set(options) - {d.name for d in dsts})
    if stray:
        raise ValueError(f"options given for type(s) {', '.join(stray)} that are not requested; add --type for them")
    archive = store.open_archive(run_dir)
    _check_archive_matches(run_dir, archive, config)
    committed = np.asarray(archive.steps, np.int64)
    if committed.size == 0:
        raise ValueError(f"run '{run_dir}' has no committed checkpoints yet; train it first or wait for a save")
    selected = select_steps(steps, committed)
    probes: dict[str, Any] = dict(built_probes or {})
    per_type = {}
    for dst in dsts:
        name = None if dst.probe is None else (probe or resolve_probe_name(dst.probe, info, config))
        if name is None:
            per_type[dst.name] = None
            continue
        if name not in probes:
            probes[name] = build_run_probe(name, run_dir, info, config)
        per_type[dst.name] = probes[name]
    for dst in dsts:
        resolved = resolve_options(dst, options.get(dst.name))
        if dst.validate is not None:
            dst.validate(resolved, per_type[dst.name])
    specs = [_variable_spec(dst, config, per_type[dst.name], options.get(dst.name)) for dst in dsts]
    if not force:
        store.check_variables(run_dir, specs)  # stored cells with another probe or options: refuse now
    missing = {dst.name: selected if force else store.missing_steps(run_dir, dst.name, selected) for dst in dsts}
    probes_by_type = {dst.name: per_type[dst.name] for dst in dsts}
    return ComputePlan(run_dir, config, dsts, probes_by_type, {k: v for k, v in missing.items() if len(v)}, selected,
                       specs, committed, force, {k: dict(v) for k, v in options.items()})


def _check_archive_matches(run_dir: Path, archive: store.ArchiveReader, config: ModelConfig) -> None:
    """ValueError (before anything is written) when run.json's model config does not describe the
    checkpoints the archive holds (an edited or swapped run.json)."""
    want = named_shapes(model_template(config)[0])
    have = {name: tuple(shape) for name, (shape, _dtype) in archive.leaf_specs.items()}
    if set(want) != set(have):
        odd = sorted(set(want) ^ set(have))[:3]
        raise ValueError(f"run.json's model config for '{run_dir}' does not match its checkpoint archive (parameters "
                         f"{', '.join(odd)} are in one but not the other); restore run.json from a copy")
    bad = [n for n in want if want[n] != have[n]]
    if bad:
        raise ValueError(f"run.json's model config for '{run_dir}' does not match its checkpoint archive: parameter "
                         f"{bad[0]} is stored with shape {have[bad[0]]}, the config gives {want[bad[0]]}; restore "
                         "run.json from a copy")


def _validate_program(fn: ComputeFn, param_shapes) -> Any:
    """Trace the program on shapes only: a type that raises or returns a wrong shape fails here.
    Returns the lowered program."""
    try:
        return fn.trace_shapes(param_shapes)
    except ValueError:
        raise
    except Exception as exc:  # a user type's own error: name the type it came from
        raise ValueError(f"computing the requested types failed while tracing: {type(exc).__name__}: {exc}") from None


def compute_run(
    run_dir: str | Path,
    types: Sequence[str | DerivedScalarType],
    *,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    block_size: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    plan: ComputePlan | None = None,
    targets: Mapping[str, str] | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    type_timing: bool = False,
) -> ComputeReport:
    """Compute the missing (type, step) cells of `types` for one run and store them.

    Idempotent: a second call computes nothing; after a crash it computes only what is missing.
    `on_progress(cells_done, cells_total)` is called after every block. `options` maps a type
    name to option overrides (stored in the variable's attrs). `targets` are the arrays to write
    (from `store.ensure_variables`) when the caller prepared the store itself; it then also
    commits or discards staged replacements. A block that takes longer than `stall_timeout`
    seconds raises StallError naming the types and steps; nothing half-written is left. With
    `type_timing`, `report.type_seconds` splits the compute time over the types by their XLA FLOP
    counts (each type lowered alone once: a fraction of a second per type, so off by default).
    """
    t0 = time.perf_counter()
    plan = plan or plan_compute(run_dir, types, steps=steps, probe=probe, force=force, options=options)
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
        fn = _program(names, plan, block_size > 1)
        shapes = param_shapes if block_size == 1 else jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct((1 << (block_size - 1).bit_length(), *x.shape), x.dtype), param_shapes)
        lowered = _validate_program(fn, shapes)  # user types fail here, before anything stored is touched
        programs[names] = fn
        streams[names] = 1 if block_size > 1 or pool_blocking_kernels(lowered) else compute_streams()
    own = targets is None
    if own:
        targets = store.ensure_variables(plan.run_dir, plan.specs, plan.committed, force=plan.force)
    try:
        if plan.n_cells:
            _compute_groups(plan, groups, programs, streams, targets, block_size, param_shapes, report,
                            on_progress, stall_timeout, type_timing)
    except BaseException:
        if own:
            store.discard_replacements(plan.run_dir, targets)
        raise
    if own:
        report.warnings.extend(dropped_warnings(plan, store.commit_replacements(plan.run_dir, targets)))
    report.seconds = time.perf_counter() - t0
    return report


def dropped_warnings(plan: ComputePlan, dropped: Mapping[str, int]) -> list[str]:
    """One sentence per replaced type whose old cells outside the recomputed steps were dropped."""
    return [f"{name}: its definition changed, so {n} cell(s) of the old definition outside the recomputed "
            f"steps were dropped (not mixed with the new ones); compute the type at those steps to fill them"
            for name, n in dropped.items()]


def _compute_groups(plan: ComputePlan, groups: Mapping[tuple[str, ...], list[int]], programs: Mapping,
                    streams: Mapping[tuple[str, ...], int], targets: Mapping[str, str], block_size: int,
                    param_shapes, report: ComputeReport, on_progress: Callable[[int, int], None] | None,
                    stall_timeout: float | None, type_timing: bool = False) -> None:
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
        with _CellWriter(plan, report, targets) as writer:
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


_PROGRAMS: dict[tuple, ComputeFn] = {}  # compiled programs kept across calls (runs of one architecture)
_PROGRAM_CACHE_SIZE = 4


def _program(names: tuple[str, ...], plan: ComputePlan, block: bool) -> ComputeFn:
    """The ComputeFn for `names` on this plan's config and probes: reused, compile included, by a
    later call with the same types, options, probe contents and architecture (e.g. a sweep's runs)."""
    options = {k: v for k, v in (plan.options or {}).items() if k in names}
    probes = tuple((n, None if plan.probes[n] is None else plan.probes[n].content_hash) for n in names)
    key = (tuple(get_type(n) for n in names), plan.config, probes, json.dumps(options, sort_keys=True, default=str),
           block, jax.default_backend())
    fn = _PROGRAMS.pop(key, None)
    if fn is None:
        fn = ComputeFn(list(names), plan.config, None, type_probes={n: plan.probes[n] for n in names},
                       options=options, block=block)
    _PROGRAMS[key] = fn  # most recently used last
    while len(_PROGRAMS) > _PROGRAM_CACHE_SIZE:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    return fn


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

    def __init__(self, plan: ComputePlan, report: ComputeReport, targets: Mapping[str, str]):
        self.plan, self.report, self.targets = plan, report, targets
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
            store.write_cells(self.plan.run_dir, self.targets[name], steps, values)
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


def expand_run_dirs(patterns: Sequence[str]) -> list[Path]:
    """Run directories from paths and globs; a glob matching nothing or a non-run path is an error."""
    import glob

    out: list[Path] = []
    bad: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise ValueError(f"no run directories match '{pattern}'; check the path or quote the glob")
        for m in matches:
            (out if store.is_run_dir(m) else bad).append(Path(m) if store.is_run_dir(m) else m)
    if bad:
        raise ValueError(f"not run directories (no run.json): {', '.join(map(str, bad[:5]))}; "
                         "pass directories written by `scalars train` or `scalars import` (nothing was computed)")
    return list(dict.fromkeys(out))


def applicable_types(config: ModelConfig) -> list[str]:
    """Every registered type whose requirements the model meets (for --all); opt-in types
    (costly estimators) are left out."""
    from ._registry import list_types

    return [t.name for t in list_types() if t.requires in (None, config.head) and not t.opt_in and _sized(t, config)]


def _sized(dst: DerivedScalarType, config: ModelConfig) -> bool:
    """False when one of the type's model dims has no size for `config` (neurons of an attention-only model)."""
    from .dims import KEY_POS, POS, QUERY_POS, dim_size

    try:
        for d in dst.dims:
            if d not in (POS, QUERY_POS, KEY_POS):
                dim_size(d, config, None, dst.sizes)
    except ValueError:
        return False
    return True


def plan_runs(run_dirs: Sequence[str], types: Sequence[str], *, all_types: bool = False, steps: str | None = None,
              probe: str | None = None, force: bool = False,
              options: Mapping[str, Mapping[str, Any]] | None = None) -> list[ComputePlan]:
    """Expand globs and plan every run (nothing written); any bad run or request fails before work starts."""
    if all_types and types:
        raise ValueError("pass either --type NAME ... or --all, not both")
    plans = []
    for d in expand_run_dirs(run_dirs):
        names, built = expand_type_names(types), None
        if all_types:
            names, built = _buildable(d, applicable_types(load_run_model_config(d)[1]), probe)
        plans.append(plan_compute(d, names, steps=steps, probe=probe, force=force, options=options,
                                  built_probes=built))
    return plans


def compute_runs(
    run_dirs: Sequence[str],
    types: Sequence[str],
    *,
    all_types: bool = False,
    steps: str | None = None,
    probe: str | None = None,
    force: bool = False,
    block_size: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ComputeReport]:
    """`compute_run` over several runs with one progress bar; plans every run before computing any.
    `options` maps a type name to option overrides."""
    from .progress import CellProgress

    plans = plan_runs(run_dirs, types, all_types=all_types, steps=steps, probe=probe, force=force, options=options)
    total = sum(p.n_cells for p in plans)
    if log:
        log(f"{total} cells to compute over {len(plans)} run(s)")
    reports = []
    with CellProgress(total, enabled=progress and total > 0) as bar:
        offset = 0
        for plan in plans:
            rep = compute_run(plan.run_dir, [t.name for t in plan.types], plan=plan, block_size=block_size,
                              on_progress=lambda done, _t, offset=offset: bar.update(offset + done))
            offset += plan.n_cells
            reports.append(rep)
    return reports


def _buildable(run_dir: Path, names: list[str], probe: str | None) -> tuple[list[str], dict[str, Any]]:
    """Drop types whose probe this run cannot provide (for --all); returns the kept names and the
    probes built on the way (by name), so that each probe is built once per request."""
    info, config = load_run_model_config(run_dir)
    keep, built, refused = [], {}, set()
    for name in names:
        raw = get_type(name).probe
        if raw is None:
            keep.append(name)
            continue
        probe_name = probe or resolve_probe_name(raw, info, config)
        if probe_name not in built and probe_name not in refused:
            try:
                built[probe_name] = build_run_probe(probe_name, run_dir, info, config)
            except ValueError:
                refused.add(probe_name)
        if probe_name in built:
            keep.append(name)
    return keep, built
