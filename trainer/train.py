"""The training loop: jitted AdamW steps, evaluations, and a crash-safe dense checkpoint archive.

Batch t is drawn with `fold_in(key(train_seed), t)`, so the data-stream position is the step;
with the optimizer state saved beside each checkpoint, `resume` continues bit-for-bit the run
that was not interrupted. Checkpoints are written by a background thread in step order (the
commit record of each is written last, see `store.ArchiveWriter`) at the lowest CPU priority;
metric rows are flushed about once a second, and rows not yet flushed travel in each
checkpoint's resume state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import store

from .config import validate
from .sections import SeedConfig, TrainConfig
from .interventions import intervention_cache, parse_interventions
from .memory import check_fits
from .metric_info import describe_metric
from .model import build_model, load_named_leaves
from .run_info import run_info
from .schedules import AdaptiveSaver, ScheduleSpec
from .tasks import Task, build_task
from ._train_writer import _HostCopy, _MetricsFlusher, _to_host, _Writer


METRICS_FLUSH_SECONDS = 1.0
"""Metric rows reach metrics.zarr at most this long after they are logged (and at the end). Rows
not yet flushed when a checkpoint is saved go into its resume state, so a resumed run loses none."""


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup, then a constant or cosine-decayed learning rate; optional clipping."""
    warmup = min(tc.warmup_steps, tc.steps)  # a short run with a preset's warmup just warms up
    decay_steps = max(tc.steps - warmup, 1)
    if tc.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(tc.lr, decay_steps)
    else:
        after = optax.constant_schedule(tc.lr)
    if warmup:
        lr = optax.join_schedules([optax.linear_schedule(0.0, tc.lr, warmup), after], [warmup])
    else:
        lr = after
    adam = optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adam) if tc.grad_clip else adam


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite: training stops there, earlier checkpoints kept."""

    def __init__(self, step: int, loss: float, last_saved: int | None):
        kept = f"checkpoints up to step {last_saved} are kept" if last_saved is not None else "no checkpoint was kept"
        super().__init__(f"the training loss became {loss} at step {step}, so training stopped there ({kept}); "
                         "lower train.lr or add train.warmup_steps and start a new run")
        self.step, self.loss, self.last_saved = step, loss, last_saved


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    steps_saved: list[int]
    final_loss: float
    seconds: float
    write_seconds: float
    log_times: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(step, seconds since the loop started) at every logged step: throughput over time."""
    finished_before: bool = False  # a resume of a run that was already complete (nothing was done)


def _make_step_fn(task: Task, static, opt, interventions, train_key, batch_size: int):
    cfg = task.model_config

    def loss_fn(params, batch, step):
        model = eqx.combine(params, static)
        n_pos = task.n_positions(batch)
        cache, mask = intervention_cache(interventions, cfg, n_pos, step)

        def one(example):
            out = model.call_with_all_aux(task.model_input(example), cache=cache, cache_mask=mask)["out"]
            return task.example_loss(out, example)

        return jax.vmap(one)(batch).mean()

    @eqx.filter_jit
    def step_fn(params, opt_state, step):
        batch = task.sample(jax.random.fold_in(train_key, step), batch_size)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, step)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step_fn


def _make_eval_fn(task: Task, static, eval_sets: dict):
    @eqx.filter_jit
    def eval_fn(params):
        model = eqx.combine(params, static)
        out = {}
        for name, batch in eval_sets.items():
            def one(example, name=name):
                return task.eval_metrics(name, model(task.model_input(example)), example)

            out.update(jax.tree_util.tree_map(jnp.mean, jax.vmap(one)(batch)))
        return out

    return eval_fn


def check_out_dir(run_dir: Path) -> None:
    """Refuse to train into a directory that already holds a run or other files (one a ``train``
    was stopped in before writing run.json counts as empty: see ``store.is_unstarted_run``)."""
    if store.is_run_dir(run_dir):
        raise FileExistsError(
            f"'{run_dir}' already holds a run; continue it with `scalars train --resume {run_dir}` or choose another --out"
        )
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not store.is_unstarted_run(run_dir):
        raise FileExistsError(f"'{run_dir}' exists and is not an empty directory; choose another --out")


ProgressFn = Callable[[int, int, Mapping[str, float]], None]
"""`on_progress(step, total, values)`: training has reached `step` of `total`; `values` holds the metrics
that arrived with it (`train_loss` every `train.log_every` steps, the evaluations every `train.eval_every`),
empty between them. A command line draws its bar from these calls; the library draws nothing."""


def train(config: dict, out_dir: str | os.PathLike, *, resume: bool = False, on_progress: ProgressFn | None = None,
          log: Callable[[str], None] | None = None, from_step: int | None = None) -> TrainResult:
    """Train the run described by `config` into `out_dir` (or continue it with `resume=True`,
    from its last checkpoint or from `from_step`), calling `on_progress` as it goes."""
    run_dir = Path(out_dir)
    validate(config)
    if not resume:
        check_out_dir(run_dir)
    task = build_task(config)
    tc, seeds = TrainConfig(**config["train"]), SeedConfig(**config["seeds"])
    spec = ScheduleSpec.parse(config["checkpoints"]["schedule"])
    fixed_steps = set(spec.steps(tc.steps)) | {tc.steps}
    saver: AdaptiveSaver | None = spec.make_saver()
    interventions = parse_interventions(config.get("interventions", []), config)

    model = build_model(task.model_config, seed=seeds.init_seed)
    check_fits(task, model, tc.batch_size, tc.eval_size)  # before the run directory is made
    params, static = eqx.partition(model, eqx.is_array)
    opt = make_optimizer(tc)
    opt_state = opt.init(params)

    run_dir.mkdir(parents=True, exist_ok=True)
    with store.run_lock(run_dir, "train"):
        if resume and from_step is None and _finished(run_dir, tc.steps):
            return TrainResult(run_dir, [], float("nan"), 0.0, 0.0, finished_before=True)
        if not resume:
            check_out_dir(run_dir)  # again, under the lock: no other trainer is starting in it now
            store.clear_unstarted_run(run_dir)
        start = 0
        archive = store.ArchiveWriter(run_dir, {k: (v.shape, v.dtype.name) for k, v in _to_host(params).items()})
        metrics = store.MetricsWriter(run_dir, describe=describe_metric)
        if resume:
            start, params, opt_state, saver = _restore(run_dir, archive, metrics, model, opt_state, saver, log, from_step)
        else:
            store.write_run_json(run_dir, run_info(config, task.model_config))
        try:
            result = _loop(
                task, tc, seeds, static, params, opt, opt_state, start, fixed_steps, saver, interventions,
                run_dir, archive, metrics, on_progress, start_saved=start in set(int(x) for x in archive.steps),
            )
        except jax.errors.JaxRuntimeError as exc:
            if "RESOURCE_EXHAUSTED" not in str(exc):
                raise
            found = re.search(r"allocating (\d+) bytes", str(exc))
            size = f" (it tried to allocate {int(found.group(1)) / 2**30:.1f} GiB)" if found else ""
            raise MemoryError(f"a training step needs more memory than this machine has{size} with "
                              f"train.batch_size={tc.batch_size} and train.eval_size={tc.eval_size}; memory grows "
                              f"with both: start a new run with smaller values (another --out, or delete "
                              f"'{run_dir}' first)") from None
    return result


def _finished(run_dir: Path, steps: int) -> bool:
    """True (nothing touched) when the run is complete: its final checkpoint is committed and
    intact and its metrics reach the final step. A run killed after its last save but before its last
    metric rows were flushed still resumes (to finish them); a damaged last checkpoint is left to the
    resume's own check, which names the previous one."""
    reader = store.open_archive(run_dir)
    committed = reader.steps
    if not committed.size or int(committed[-1]) < steps:
        return False
    metric_steps = store.open_metrics(run_dir).step.values
    return bool(metric_steps.size) and int(metric_steps[-1]) >= steps and _intact(reader, int(committed[-1]))


def _intact(reader: store.ArchiveReader, step: int) -> bool:
    try:
        return reader.verify_checksum(step)
    except Exception:  # an unreadable or missing chunk
        return False


def _restore(run_dir, archive, metrics, model, opt_state, saver, log, from_step=None):
    """Load the last committed checkpoint (or `from_step`) that has a resume state; drop what came after.

    A corrupted latest checkpoint is refused, naming the previous intact one to resume from.
    """
    available = set(store.resume_steps(run_dir))
    candidates = [int(s) for s in archive.steps if int(s) in available]
    if not candidates:
        if len(archive.steps):
            raise ValueError(f"'{run_dir}' has checkpoints but no optimizer state to resume from; start a new run")
        if from_step is not None:
            raise ValueError(f"'{run_dir}' has no checkpoint to resume from; drop --from-step")
        return 0, eqx.partition(model, eqx.is_array)[0], opt_state, saver
    reader = store.open_archive(run_dir)
    if from_step is not None:
        if from_step not in candidates:
            raise ValueError(f"step {from_step} cannot be resumed from: checkpoints with optimizer state are "
                             f"{', '.join(map(str, candidates))}")
        step = from_step
        if not _intact(reader, step):
            raise ValueError(f"checkpoint {step} of '{run_dir}' is corrupted too; run `scalars verify {run_dir}`")
    else:
        step = candidates[-1]
        if not _intact(reader, step):
            previous = [s for s in reversed(candidates[:-1]) if _intact(reader, s)]
            hint = (f"resume from the previous intact checkpoint with `scalars train --resume {run_dir} "
                    f"--from-step {previous[0]}` (later checkpoints are discarded)") if previous else \
                "no earlier checkpoint with optimizer state is intact; start a new run"
            raise ValueError(f"the latest checkpoint ({step}) of '{run_dir}' fails its checksum; {hint}")
    archive.truncate_after(step)
    metrics.truncate_after(step - 1)
    params = eqx.partition(load_named_leaves(model, reader.load(step)), eqx.is_array)[0]
    arrays, meta = store.read_resume_state(run_dir, step)
    last = metrics.last_committed_step
    for row_step, row in meta.get("metrics_rows", []):  # rows saved with the checkpoint, not yet flushed
        if row_step < step and (last is None or row_step > last):
            metrics.append(row_step, row)
    metrics.flush()
    opt_state = load_named_leaves(opt_state, arrays)
    if meta.get("saver") is not None:
        saver = AdaptiveSaver.from_state_dict(meta["saver"])
    if log:
        log(f"resuming from step {step}")
    return step, params, opt_state, saver


def _loop(task, tc, seeds, static, params, opt, opt_state, start, fixed_steps, saver, interventions,
          run_dir, archive, metrics, on_progress: ProgressFn | None, start_saved) -> TrainResult:
    report = on_progress or (lambda step, total, values: None)
    train_key = jax.random.key(seeds.train_seed)
    step_fn = _make_step_fn(task, static, opt, interventions, train_key, tc.batch_size)
    eval_fn = _make_eval_fn(task, static, task.eval_sets(seeds.eval_seed, tc.eval_size))
    writer = _Writer(run_dir, archive, metrics)
    writer.start()
    flusher = _MetricsFlusher(metrics, METRICS_FLUSH_SECONDS)
    params_to_host, opt_to_host = _HostCopy(params), _HostCopy(opt_state)
    pending: list[tuple[int, jax.Array]] = []  # (step, device loss) not yet on the host
    rows: dict[int, dict[str, float]] = {}  # metric rows not yet handed to the writer
    saved: list[int] = []
    log_times: list[tuple[int, float]] = []
    last_loss = float("nan")
    t0 = time.perf_counter()

    def drain(before: int) -> None:
        """Fetch pending losses to the host; hand every complete row (step < before) to the writer.
        A non-finite loss stops training there (before the next save, whose weights it would poison)."""
        nonlocal pending, last_loss
        if pending:
            values = jax.device_get([v for _, v in pending])
            bad = None
            for (s, _), v in zip(pending, values):
                rows.setdefault(s, {})["train_loss"] = float(v)
                if bad is None and not math.isfinite(float(v)):
                    bad = (s, float(v))
            if bad is not None:  # keep the rows before it, then stop
                kept = [(s, rows.pop(s)) for s in sorted(rows) if s < bad[0]]
                writer.submit(lambda batch=kept: flusher.append(batch))
                raise TrainingDiverged(bad[0], bad[1], saved[-1] if saved else None)
            last_loss = float(values[-1])
            pending = []
        done = sorted(s for s in rows if s < before)
        if done:
            batch = [(s, rows.pop(s)) for s in done]
            writer.submit(lambda batch=batch: flusher.append(batch))

    try:
        report(start, tc.steps, {})
        for t in range(start, tc.steps + 1):
            save, save_job = False, None
            if not (start_saved and t == start):  # a resumed run's first step is already in the archive
                adaptive = False
                if saver is not None and t > 0:
                    drain(t)
                    adaptive = saver.update(t, last_loss)
                save = t in fixed_steps or adaptive
                if save and saver is not None and not adaptive:
                    saver.mark_saved(t)
            if save:
                drain(t)
                meta = {"step": t, "saver": saver.state_dict() if saver is not None else None}

                def job(t=t, params=params, opt_state=opt_state, meta=meta):
                    # fetched here, off the training thread (the copy waits for step t-1 to finish)
                    host_params, host_opt = params_to_host(params), opt_to_host(opt_state)
                    flusher.flush_if_due()
                    store.write_resume_state(run_dir, t, host_opt, {**meta, "metrics_rows": metrics.buffered_rows()})
                    archive.write_checkpoint(t, host_params)
                    store.prune_resume_states(run_dir, keep=2)

                save_job = job
                saved.append(t)
            if t % tc.eval_every == 0 or t == tc.steps:
                values = {k: float(v) for k, v in jax.device_get(eval_fn(params)).items()}
                rows.setdefault(t, {}).update(values)
                report(t, tc.steps, values)
            if t < tc.steps:
                params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(t, jnp.int32))
                pending.append((t, loss))
            if save_job is not None:  # handed over once step t is dispatched: XLA has work while it starts
                writer.submit(save_job)
            if t < tc.steps:
                if (t + 1) % tc.log_every == 0:
                    drain(t + 1)  # waits for step t: the time below is when it finished
                    log_times.append((t + 1, time.perf_counter() - t0))
                    report(t + 1, tc.steps, {"train_loss": last_loss})
                else:
                    report(t + 1, tc.steps, {})
        drain(tc.steps + 1)
        writer.submit(flusher.flush)
        writer.close()
    except TrainingDiverged:
        writer.submit(flusher.flush)  # the rows and the checkpoints before the bad step are kept
        writer.close()
        raise
    return TrainResult(run_dir, saved, last_loss, time.perf_counter() - t0, writer.busy_s, log_times)
