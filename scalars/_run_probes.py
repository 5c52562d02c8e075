"""Probes built from a run: the engine turns a type's probe name into a concrete, hashed batch.

Names: `repeated_tokens` (token runs: BOS + T random tokens repeated; options
`repeated_tokens:batch=16,T=32,seed=0`), `icl` / `iwl` / `icl_train` / `fsl_*` (a classifier
run's evaluation sets, regenerated from its task config and eval seed), `icl_dynamics` (the
paper's probe set: every ordered pair of training classes x training relabelings x query
item), `default` (repeated_tokens for token runs; icl_dynamics or icl for classifiers), or a
path to a `.npy` token array / `.npz` classifier arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.model import ModelConfig

from ._probes import Probe, from_classifier_arrays, from_npy, from_tokens, repeated_tokens

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
    """The concrete probe name for `default`; other names unchanged."""
    if name != "default":
        return name
    if config.head == "lm":
        return "repeated_tokens"
    return "icl_dynamics" if _is_classifier_icl_dynamics(info) else "icl"


def _stored_probe(run_dir: Path, name: str) -> Probe | None:
    path = run_dir / PROBE_DIR / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "tokens" in arrays:
        return from_tokens(arrays["tokens"], name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"})
    return from_classifier_arrays(name=name, metadata={"source": f"{PROBE_DIR}/{name}.npz"}, **arrays)


def build_run_probe(name: str, run_dir: str | Path, info: dict, config: ModelConfig) -> Probe:
    """The probe called `name` for the run in `run_dir` (its run.json content is `info`)."""
    run_dir = Path(run_dir)
    name = resolve_probe_name(name, info, config)
    if name.endswith(".npy"):
        probe = from_npy(name, vocab_size=config.vocab_size if config.head == "lm" else None)
        probe.check(config)
        return probe
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"probe file {name!r} does not exist")
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        if "tokens" in arrays:
            probe = from_tokens(arrays["tokens"], name=path.stem, metadata={"source": path.name})
        else:
            probe = from_classifier_arrays(name=path.stem, metadata={"source": path.name}, **arrays)
        probe.check(config)
        return probe
    base, opts = _options(name)
    stored = _stored_probe(run_dir, base)
    if stored is not None:
        stored.check(config)
        return stored
    if base == "repeated_tokens":
        if config.head != "lm":
            raise ValueError("probe 'repeated_tokens' needs a token language model; this run is a classifier")
        task = info.get("config", {}).get("task", {})
        limit = (config.n_ctx - 1) // 2 if config.positional == "learned" else 64
        unknown = set(opts) - {"batch", "T", "seed"}
        if unknown:
            raise ValueError(f"unknown repeated_tokens option(s) {sorted(unknown)}; use batch, T, seed")
        probe = repeated_tokens(seed=opts.get("seed", 0), batch=opts.get("batch", 16), T=opts.get("T", min(32, limit)),
                                vocab_size=config.vocab_size, bos=int(task.get("bos_token", 0)))
        probe.check(config)
        return probe
    if config.head != "classifier":
        raise ValueError(f"probe '{base}' is a classifier probe but this run is a token language model; "
                         "use repeated_tokens or a .npy token file")
    return _classifier_probe(base, opts, run_dir, info, config)


def _classifier_probe(base: str, opts: dict, run_dir: Path, info: dict, config: ModelConfig) -> Probe:
    from trainer.tasks_runtime import build_task
    from trainer.tasks import icl_dynamics_probe_for, make_eval_sets

    run_config = info.get("config", {})
    if "task" not in run_config or "train" not in run_config:
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
