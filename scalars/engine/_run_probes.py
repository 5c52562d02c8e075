"""Probes built from a run: the engine turns a type's probe name into a concrete, hashed batch.

Names: `repeated_tokens` (token runs: BOS + T random tokens repeated; options
`repeated_tokens:batch=16,T=32,seed=0`), `icl` / `iwl` / `icl_train` / `fsl_*` (a classifier
run's evaluation sets, regenerated from its task config and eval seed), `icl_dynamics` (the
paper's probe set: every ordered pair of training classes x training relabelings x query
item), `regression` / `regression_pool` (a regression run's fresh-Gaussian-task and
training-task sequences with the ridge and dMMSE predictions; options `batch=512,seed=<eval seed>`),
`default` (repeated_tokens for token runs; icl_dynamics or icl for classifiers; regression for
regression runs), `default_train` (regression_pool for regression runs, else `default`), or a path to a `.npy` token array / `.npz` classifier or regression arrays.
`NAME:stride=K` keeps every K-th sequence of any of them (`icl_dynamics:stride=16`).
Named builders (the built-ins above and any a plugin adds with `register_probe`) live in
`scalars.probes` (`register_probe`); files, stored probes, pairs and a classifier's evaluation sets come first.
Paired probes for patching (`induction_pair`, `label_swap_pair`, `default_pair`, `CLEAN.npy,CORRUPT.npy`,
a `.npz` with `corrupt_tokens`) come from `_run_pairs.build_run_pair`, which gets `build_run_probe` for their clean side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.model import ModelConfig, model_head
from trainer.tasks import task_offers_eval_set_probes

from ..probes._icl import split_stride, stored_icl_dynamics_probe, take_every
from ..probes._registry import ProbeRun, get_probe_builder, list_probes, register_probe, split_probe_options
from ..probes._input_kinds import CLASSIFIER, REGRESSION, describe_kinds, input_kind_for_head, input_kind_of
from ..probes._probe import (Probe, from_classifier_arrays, from_npy, from_regression_arrays, probe_from_arrays, read_npz,
                      repeated_tokens)
from ..registry import resolve_default_probe
from ._program import model_template
from ._run_pairs import build_run_pair

EVAL_SET_SIZE = 512
PROBE_DIR = "probes"  # RUN_DIR/probes/<name>.npz: probe arrays stored with the run (e.g. at import)


def resolve_probe_name(name: str, info: dict, config: ModelConfig) -> str:
    """The concrete probe name for `default`, `default_pair` and `default_train` on this run: the
    run's task's own choice (`Task.probe_defaults`: the icl-dynamics format reads its paper's
    probe set), else the model head's input kind's (`resolve_default_probe`); other names unchanged."""
    from trainer.tasks import task_probe_defaults

    chosen = task_probe_defaults(info.get("config", {})).get(name)
    if chosen is not None:
        return chosen
    # a kind without a paired probe (regression) gets the classifier's, whose builder says why not
    return resolve_default_probe(name, config.head) or CLASSIFIER.default_pair


def _stored_probe(run_dir: Path, name: str) -> Probe | None:
    path = run_dir / PROBE_DIR / f"{name}.npz"
    if not path.is_file():
        return None
    return probe_from_arrays(read_npz(path), name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"})


def build_run_probe(name: str, run_dir: str | Path, info: dict, config: ModelConfig) -> Probe:
    """The probe called `name` for the run in `run_dir` (its run.json content is `info`);
    `name:stride=K` keeps every K-th sequence."""
    full, (name, stride) = name, split_stride(name)
    try:
        probe = _build_run_probe(name, run_dir, info, config)
    except MemoryError:
        raise MemoryError(f"probe '{full}' is too large to build in this machine's memory; ask for fewer "
                          "sequences (e.g. batch=N in its options)") from None
    probe = probe if stride is None else take_every(probe, stride)
    check_probe_fits(probe, config, full)
    return probe


# peak memory of a compute, in units of the clean forward's activations: measured 0.5 (scores
# on patterns) to 1.3 (attribution patching, with gradients) on 2,000 repeated-token sequences
FORWARDS_HELD = 1.5


def check_probe_fits(probe: Probe, config: ModelConfig, label: str | None = None) -> None:
    """MemoryError (one sentence, before anything is allocated) when computing on `probe` needs more
    memory than the machine has free: its size, the free memory and the number of sequences that fit."""
    import equinox as eqx

    from trainer.memory import device_available_bytes, forward_bytes

    free, inputs = device_available_bytes(), getattr(probe, "inputs", None)
    if free is None or inputs is None:
        return
    need = FORWARDS_HELD * forward_bytes(eqx.combine(*model_template(config)), inputs)
    if need > free:
        fits = max(1, int(probe.batch_size * free / need))
        raise MemoryError(f"probe '{label or probe.name}' ({probe.batch_size} sequences) needs about "
                          f"{need / 2**30:.1f} GiB to compute on, more than the {free / 2**30:.1f} GiB available; "
                          f"use at most {fits} sequences (e.g. batch={fits} in its options, or :stride=K)")


def _build_run_probe(name: str, run_dir: str | Path, info: dict, config: ModelConfig) -> Probe:
    run_dir = Path(run_dir)
    name = resolve_probe_name(name, info, config)
    pair = build_run_pair(name, config, lambda n: build_run_probe(n, run_dir, info, config))  # induction_pair, label_swap_pair, pair files
    if pair is not None:
        return pair
    if name.endswith(".npy"):
        probe = from_npy(name, vocab_size=input_kind_for_head(config.head).vocab(config))
        probe.check(config)
        return probe
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"probe file {name!r} does not exist")
        arrays = read_npz(path)
        if input_kind_of(arrays) is None:
            raise ValueError(f"probe file {name!r} holds arrays {sorted(arrays)}; a probe .npz holds {describe_kinds()}")
        probe = probe_from_arrays(arrays, name=path.stem, metadata={"source": path.name})
        probe.check(config)
        return probe
    base, opts = split_probe_options(name)
    stored = _stored_probe(run_dir, base)
    if stored is not None:
        stored.check(config)
        return stored
    builder = get_probe_builder(base)
    if builder is not None:
        return builder.build(ProbeRun(run_dir, info, config), opts)
    if task_offers_eval_set_probes(info.get("config", {})):  # the run's own evaluation sets, by name
        return _eval_set_probe(base, opts, ProbeRun(run_dir, info, config))
    what = "a directory, not a probe file" if Path(name).is_dir() else "not a probe name this run knows"
    known = ", ".join(b.name for b in list_probes(config.head))
    pairs = input_kind_for_head(config.head).default_pair
    raise ValueError(f"probe '{base}' is {what}; for this {model_head(config.head).words} use {known}"
                     f"{', ' + pairs if pairs else ''}, or a .npy/.npz probe file (register more with "
                     "scalars.register_probe in a --plugin)")


@register_probe("repeated_tokens", options={"batch": 16, "T": None, "seed": 0}, requires="lm",
                description="BOS + T random tokens, repeated once (T: up to 32, as the context allows)")
def _repeated_tokens(run: ProbeRun, *, batch: int, seed: int, T: int | None = None) -> Probe:
    config = run.config
    limit = (config.n_ctx - 1) // 2 if config.positional == "learned" else 64
    return repeated_tokens(seed=seed, batch=batch, T=min(32, limit) if T is None else T,
                           vocab_size=config.vocab_size, bos=int(run.run_config.get("task", {}).get("bos_token", 0)))


@register_probe("icl_dynamics", requires="classifier",
                description="the icl-dynamics probe set: every ordered pair of training classes x training "
                            "relabelings x query item (the run's stored exemplar vectors, or its task data)")
def _icl_dynamics(run: ProbeRun) -> Probe:
    from trainer.tasks import icl_dynamics_probe_for

    stored = stored_icl_dynamics_probe(run.run_dir, run.info)
    if stored is not None:  # an imported run's own exemplar vectors: no data file needed
        return stored
    task = _run_task(run, "icl_dynamics")
    if "icl_dynamics" not in type(task).offered_probes(task.cfg):
        raise ValueError("probe 'icl_dynamics' needs a run whose task samples the icl-dynamics sequence format "
                         "(task.sequence_format=\"icl_dynamics\")")
    arrays = icl_dynamics_probe_for(task.cfg, np.asarray(task.data))
    return from_classifier_arrays(name="icl_dynamics", metadata={"kind": "icl_dynamics"}, **arrays)


def _run_task(run: ProbeRun, probe: str):
    from trainer.tasks import build_task

    if "task" not in run.run_config:
        raise ValueError(f"run '{run.run_dir}' stores no task config to rebuild probe '{probe}' from; "
                         f"pass a probe file (.npz) or store it as {PROBE_DIR}/{probe}.npz")
    return build_task(run.run_config)


def _eval_set_probe(base: str, opts: dict, run: ProbeRun) -> Probe:
    """The run's evaluation set `base` (its task offers them as probes), regenerated from its task
    config and eval seed."""
    unknown = sorted(set(opts) - {"batch"})
    if unknown:
        raise ValueError(f"unknown evaluation-set probe option(s) {unknown}; use batch")
    task = _run_task(run, base)
    sets = task.eval_sets(run.eval_seed, opts.get("batch", EVAL_SET_SIZE))
    if base not in sets:
        raise ValueError(f"unknown probe '{base}' for this run; its evaluation sets are {', '.join(sorted(sets))}"
                         f", its other probes {', '.join(b.name for b in list_probes(run.config.head))}")
    batch = {k: np.asarray(v) for k, v in sets[base].items()}
    kind = input_kind_of(batch)
    probe = probe_from_arrays({k: batch[k] for k in kind.arrays}, name=base,
                              metadata={"kind": "eval_set", "eval_seed": run.eval_seed})
    probe.check(run.config)
    return probe


def _regression_builder(base: str, which: str, what: str) -> None:
    """`regression` (fresh Gaussian tasks) or `regression_pool` (the run's training tasks), with
    the ridge and dMMSE predictions, rebuilt from the run's task config and eval seed."""

    @register_probe(base, options={"batch": EVAL_SET_SIZE, "seed": None}, requires=REGRESSION.head,
                    description=f"{what} with the ridge and dMMSE predictions (seed: the run's eval seed)")
    def build(run: ProbeRun, *, batch: int, seed: int | None = None) -> Probe:
        from trainer.tasks import RegressionTaskConfig, regression_eval_batch

        task = _run_task(run, base) if "task" in run.run_config else None
        if task is None or not isinstance(task.cfg, RegressionTaskConfig):
            raise ValueError(f"run '{run.run_dir}' stores no regression task config to rebuild probe '{base}' from; "
                             "pass a probe file (.npz with xs, ys)")
        seed = run.eval_seed if seed is None else seed
        arrays = regression_eval_batch(task.cfg, seed, batch, which)
        meta = {"kind": REGRESSION.name, "set": which, "eval_seed": seed, "n_tasks": task.cfg.n_tasks,
                "noise_var": task.cfg.noise_var}
        return from_regression_arrays(name=base, metadata=meta, **arrays)


_regression_builder("regression", "gauss", "regression sequences on fresh Gaussian tasks")
_regression_builder("regression_pool", "pool", "regression sequences on the run's training tasks")
