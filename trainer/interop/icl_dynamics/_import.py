"""`import_icl_dynamics`: plan the whole import, then write run.json, the checkpoints and the metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ...model import ModelConfig
from .._files import build_atomically
from .data import EXEMPLAR0_FILE, DataSource, resolve_data_source
from ._config import _cfg, _check_supported, checkpoint_files, icl_dynamics_model_config, read_icl_dynamics_config
from ._log import metric_rows, read_log_h5
from ._task import icl_dynamics_task
from ._weights import _leaf_specs, load_icl_dynamics_checkpoint


@dataclasses.dataclass
class _Plan:
    folder: Path
    config_json: dict
    model_config: ModelConfig
    task: dict
    checkpoints: list[tuple[int, Path]]
    optimizer_steps: list[int]
    prng_keys: dict[str, dict[str, list[int]]]
    log: dict | None
    source: DataSource


def _plan(folder: Path, data: str | Path | None, exemplars: str | Path | None = None) -> _Plan:
    """Read and validate everything of one run folder; writes nothing."""
    config_json = read_icl_dynamics_config(folder)
    _check_supported(config_json)
    files = checkpoint_files(folder)
    d_in = None
    counts, keys = [], {}
    for step, path in files:
        _, params, optimizer, seeds = load_icl_dynamics_checkpoint(path, config_json, d_in=d_in)
        d_in = params["embed.W_ex"].shape[0]
        counts.append(optimizer["count"])
        keys[str(step)] = seeds
    source = resolve_data_source(config_json, folder, d_in, data=data, exemplars=exemplars)
    log_path = folder / "log.h5"
    log = read_log_h5(log_path) if log_path.exists() else None
    return _Plan(folder, config_json, icl_dynamics_model_config(config_json, d_in=d_in),
                 icl_dynamics_task(config_json, data_section=source.task_data), files, counts, keys, log, source)


def _train_section(cj: dict) -> dict:
    """The original training settings in this project's `train` vocabulary (steps are Adam steps)."""
    bs = int(_cfg(cj, "train_bs"))
    return {"steps": int(_cfg(cj, "train_iters")) // bs, "batch_size": bs, "lr": float(cj.get("lr", float("nan"))),
            "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": float(cj.get("weight_decay") or 0.0),
            "b1": 0.9, "b2": 0.999, "grad_clip": None, "eval_size": int(cj.get("eval_iters") or 0)}


def _run_info(plan: _Plan) -> dict:
    from ...run_info import package_versions, run_coords

    cj = plan.config_json
    seeds = {"init_seed": int(cj.get("init_seed", 0)), "train_seed": int(cj.get("train_seed", 0)),
             "eval_seed": int(cj.get("eval_seed", 0))}
    steps = [s for s, _ in plan.checkpoints]
    info = {
        "source": "icl-dynamics",
        "config": {
            "model": plan.model_config.to_dict(),
            "task": plan.task,
            "seeds": seeds,
            "source": "icl-dynamics",
            "step_unit": "sequences",  # also in config, so that open_scalars shows it as a run coordinate
            "train": _train_section(cj),
            "original_config": cj,
        },
        "model": plan.model_config.to_dict(),
        "seeds": seeds,
        "step_unit": "sequences",
        "sequences_per_optimizer_step": int(_cfg(cj, "train_bs")),
        "steps": steps,
        "optimizer_steps": plan.optimizer_steps,
        "optimizer": {"name": "adam", "lr": float(cj.get("lr", float("nan"))), "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                      "weight_decay": float(cj.get("weight_decay") or 0.0)},
        "checkpoint_prng_keys": plan.prng_keys,
        "probe_data": {"icl_dynamics_exemplar0": plan.source.record()},
        "imported_from": str(plan.folder.resolve()),
        "versions": package_versions(),
    }
    return {**info, "coords": run_coords(info)}


def _write(plan: _Plan, out_dir: Path) -> None:
    import store

    specs = _leaf_specs(plan.model_config)
    d_in = plan.model_config.d_in
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = store.ArchiveWriter(out_dir, specs, capacity=max(1, len(plan.checkpoints)))
    for step, path in plan.checkpoints:
        _, params, _, _ = load_icl_dynamics_checkpoint(path, plan.config_json, d_in=d_in)
        archive.write_checkpoint(step, params)
    archive.close()
    (out_dir / EXEMPLAR0_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EXEMPLAR0_FILE, plan.source.exemplar0)
    with store.MetricsWriter(out_dir) as metrics:
        if plan.log is not None:
            for step, row in metric_rows(plan.log, train_bs=int(_cfg(plan.config_json, "train_bs"))):
                metrics.append(step, row)
    store.write_run_json(out_dir, _run_info(plan))  # last: a partial import is not a run directory


def import_icl_dynamics(
    run_folders: list[str | Path], out_dir: str | Path, *, data: str | Path | None = None,
    exemplars: str | Path | None = None,
) -> list[Path]:
    """Import icl-dynamics run folders as run directories; returns the run directories written.

    One folder is written to `out_dir` itself; several go to `out_dir/<folder name>` each.
    Everything (configs, every record of every checkpoint, log.h5, `data`) is validated before
    anything is created, and an existing non-empty target is refused. Steps are training
    sequences (the checkpoint file names); run.json lists `optimizer_steps` (Adam steps), and
    metrics rows carry `optimizer_step`. The exemplars come from `data` (an HDF5 file, or
    "synthetic" for the fixture README's stand-in), `exemplars` (a .npy of the training classes'
    exemplar-0 vectors) or the config's `data_file` if found (`resolve_data_source`; absent: a
    ValueError naming the flags); the vectors the paper's probe needs are stored in the run
    (`probes/icl_dynamics_exemplar0.npy`), so probes rebuild with no flag.
    """
    folders = [Path(f) for f in run_folders]
    if not folders:
        raise ValueError("no icl-dynamics run folders given; pass at least one folder holding config.json")
    out_dir = Path(out_dir)
    targets = [out_dir] if len(folders) == 1 else [out_dir / f.resolve().name for f in folders]
    if len({t.resolve() for t in targets}) != len(targets):
        raise ValueError("two run folders have the same name; import them one at a time with different --out")
    for t in targets:
        if t.exists() and (not t.is_dir() or any(t.iterdir())):
            raise ValueError(f"output directory {t} already exists and is not empty; choose a new --out")
    plans = [_plan(f, data, exemplars) for f in folders]
    for plan, target in zip(plans, targets):  # each built beside its target and renamed into place
        build_atomically(target, lambda tmp, plan=plan: _write(plan, tmp))
    return targets
