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
Paired probes for patching (`induction_pair`, `label_swap_pair`, `default_pair`, `CLEAN.npy,CORRUPT.npy`,
a `.npz` with `corrupt_tokens`) come from `_run_pairs.build_run_pair`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.model import ModelConfig

from ._icl_probes import split_stride, stored_icl_dynamics_probe, take_every
from ._probes import (Probe, from_classifier_arrays, from_npy, from_regression_arrays, from_tokens, read_npz,
                      repeated_tokens)
from ._run_pairs import build_run_pair, default_pair_name

EVAL_SET_SIZE = 512
PROBE_DIR = "probes"  # RUN_DIR/probes/<name>.npz: probe arrays stored with the run (e.g. at import)


def _options(text: str) -> tuple[str, dict[str, int]]:
    name, _, rest = text.partition(":")
    opts: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"probe option {item!r} in {text!r} must be key=value, e.g. repeated_tokens:batch=32,T=64")
        try:
            opts[key.strip()] = int(value)
        except ValueError:
            raise ValueError(f"probe option {key}={value!r} must be an integer") from None
    return name, opts


def _is_classifier_icl_dynamics(info: dict) -> bool:
    task = info.get("config", {}).get("task", {})
    return info.get("source") == "icl-dynamics" or bool(task.get("icl_dynamics_mode"))


def resolve_probe_name(name: str, info: dict, config: ModelConfig) -> str:
    """The concrete probe name for `default` (and `default_pair`); other names unchanged."""
    if name == "default_pair":
        return default_pair_name(config)
    if name == "default_train":  # the training distribution where a probe has it (SGLD estimators)
        if config.head == "regression":
            return "regression_pool"
        name = "default"
    if name != "default":
        return name
    if config.head == "lm":
        return "repeated_tokens"
    if config.head == "regression":
        return "regression"
    return "icl_dynamics" if _is_classifier_icl_dynamics(info) else "icl"


def _stored_probe(run_dir: Path, name: str) -> Probe | None:
    path = run_dir / PROBE_DIR / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "tokens" in arrays:
        return from_tokens(arrays["tokens"], name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"})
    if "xs" in arrays:
        return from_regression_arrays(name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"}, **arrays)
    return from_classifier_arrays(name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"}, **arrays)


# what a probe .npz holds, by the arrays it must have: token, regression or classifier probes
_NPZ_KINDS = {
    "tokens": (("tokens",), lambda path, a: from_tokens(a["tokens"], name=path.stem, metadata={"source": path.name})),
    "regression": (("xs", "ys"), lambda path, a: from_regression_arrays(
        name=path.stem, metadata={"source": path.name}, **a)),
    "classifier": (("examples", "labels"), lambda path, a: from_classifier_arrays(
        name=path.stem, metadata={"source": path.name}, **a)),
}


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

    from ._compute import model_template

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
    pair = build_run_pair(name, run_dir, info, config)  # induction_pair, label_swap_pair, pair files
    if pair is not None:
        return pair
    if name.endswith(".npy"):
        probe = from_npy(name, vocab_size=config.vocab_size if config.head == "lm" else None)
        probe.check(config)
        return probe
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"probe file {name!r} does not exist")
        arrays = read_npz(path)
        kind = next((k for k in _NPZ_KINDS if set(_NPZ_KINDS[k][0]) <= set(arrays)), None)
        if kind is None:
            wanted = "; ".join(f"{', '.join(keys)} ({k})" for k, (keys, _) in _NPZ_KINDS.items())
            raise ValueError(f"probe file {name!r} holds arrays {sorted(arrays)}; a probe .npz holds {wanted}")
        probe = _NPZ_KINDS[kind][1](path, arrays)
        probe.check(config)
        return probe
    base, opts = _options(name)
    stored = _stored_probe(run_dir, base)
    if stored is not None:
        stored.check(config)
        return stored
    if base == "repeated_tokens":
        if config.head != "lm":
            raise ValueError(f"probe 'repeated_tokens' needs a token language model; this run's model head is "
                             f"{config.head!r}")
        task = info.get("config", {}).get("task", {})
        limit = (config.n_ctx - 1) // 2 if config.positional == "learned" else 64
        unknown = set(opts) - {"batch", "T", "seed"}
        if unknown:
            raise ValueError(f"unknown repeated_tokens option(s) {sorted(unknown)}; use batch, T, seed")
        probe = repeated_tokens(seed=opts.get("seed", 0), batch=opts.get("batch", 16), T=opts.get("T", min(32, limit)),
                                vocab_size=config.vocab_size, bos=int(task.get("bos_token", 0)))
        probe.check(config)
        return probe
    if base in REGRESSION_PROBES or config.head == "regression":
        return _regression_probe(base, opts, run_dir, info, config)
    if config.head != "classifier":
        what = "a directory, not a probe file" if Path(name).is_dir() else "not a probe name this run knows"
        raise ValueError(f"probe '{base}' is {what}; for this token language model use repeated_tokens "
                         "(repeated_tokens:batch=N,T=N,seed=N), induction_pair, or a .npy/.npz token file")
    return _classifier_probe(base, opts, run_dir, info, config)


def _classifier_probe(base: str, opts: dict, run_dir: Path, info: dict, config: ModelConfig) -> Probe:
    from trainer.tasks_runtime import build_task
    from trainer.tasks import icl_dynamics_probe_for, make_eval_sets

    run_config = info.get("config", {})
    stored = stored_icl_dynamics_probe(run_dir, info) if base == "icl_dynamics" else None
    if stored is not None:  # an imported run's own exemplar vectors: no data file needed
        stored.check(config)
        return stored
    if "task" not in run_config:
        raise ValueError(f"run '{run_dir}' stores no task config to rebuild probe '{base}' from; "
                         f"pass a probe file (.npz) or store it as {PROBE_DIR}/{base}.npz")
    task = build_task(run_config)
    if base == "icl_dynamics":
        if not getattr(task.cfg, "icl_dynamics_mode", False):
            raise ValueError("probe 'icl_dynamics' needs an icl-dynamics style task (task.icl_dynamics_mode=true)")
        arrays = icl_dynamics_probe_for(task.cfg, np.asarray(task.data))
        probe = from_classifier_arrays(name="icl_dynamics", metadata={"kind": "icl_dynamics"}, **arrays)
    else:
        seed = int(run_config.get("seeds", {}).get("eval_seed", 0))
        sets = make_eval_sets(task.cfg, task.data, seed, opts.get("batch", EVAL_SET_SIZE))
        if base not in sets:
            raise ValueError(f"unknown probe '{base}' for this run; its evaluation sets are {', '.join(sorted(sets))}")
        batch = {k: np.asarray(v) for k, v in sets[base].items()}
        probe = from_classifier_arrays(batch["examples"], batch["labels"], name=base,
                                       metadata={"kind": "eval_set", "eval_seed": seed})
    probe.check(config)
    return probe


REGRESSION_PROBES = {"regression": "gauss", "regression_pool": "pool"}


def _regression_probe(base: str, opts: dict, run_dir: Path, info: dict, config: ModelConfig) -> Probe:
    """`regression` (fresh Gaussian tasks) or `regression_pool` (the run's training tasks), with
    the ridge and dMMSE predictions, rebuilt from the run's task config and eval seed."""
    from trainer.tasks import regression_eval_batch
    from trainer.tasks_runtime import build_task

    if base not in REGRESSION_PROBES:
        raise ValueError(f"unknown probe '{base}' for a regression run; use {', '.join(REGRESSION_PROBES)} or a "
                         ".npz file with xs and ys")
    if config.head != "regression":
        raise ValueError(f"probe '{base}' needs a regression run (task.kind = regression); this run's model head is "
                         f"{config.head!r}")
    unknown = set(opts) - {"batch", "seed"}
    if unknown:
        raise ValueError(f"unknown {base} probe option(s) {sorted(unknown)}; use batch, seed")
    run_config = info.get("config", {})
    if run_config.get("task", {}).get("kind") != "regression":
        raise ValueError(f"run '{run_dir}' stores no regression task config to rebuild probe '{base}' from; pass a "
                         f"probe file (.npz with xs, ys)")
    task = build_task(run_config)
    seed = opts.get("seed", int(run_config.get("seeds", {}).get("eval_seed", 0)))
    batch = opts.get("batch", EVAL_SET_SIZE)
    if batch < 1:
        raise ValueError(f"probe option batch={batch} must be a positive number of sequences")
    arrays = regression_eval_batch(task.cfg, seed, batch, REGRESSION_PROBES[base])
    meta = {"kind": "regression", "set": REGRESSION_PROBES[base], "eval_seed": seed, "n_tasks": task.cfg.n_tasks,
            "noise_var": task.cfg.noise_var}
    probe = from_regression_arrays(name=base, metadata=meta, **arrays)
    probe.check(config)
    return probe
