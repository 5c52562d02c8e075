"""Planning a compute: the one validated request for a run (types, options, probes, missing cells).

`plan_compute` checks the types against the model, builds each probe once, resolves and validates
options, checks the stored variables and lists the missing (type, step) cells; nothing is
written. `plan_runs` does it for every run of a request before any is computed, so a bad run
fails before work starts. The plan is what `run_plan` executes, in process or on a worker.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import store
from trainer.model import ModelConfig, named_shapes

from ..dims import KEY_POS, POS, QUERY_POS, dim_size
from ..registry import DerivedScalarType, expand_type_names, get_type, list_types, resolve_options, type_coords
from ._program import check_types, model_template
from ._run_probes import build_run_probe, resolve_probe_name
from ._steps import select_steps

__all__ = ["ENGINE_VERSION", "ComputePlan", "plan_compute", "plan_runs", "load_run_model_config", "expand_run_dirs",
           "applicable_types"]


ENGINE_VERSION = "1"


@dataclasses.dataclass
class ComputePlan:
    """What `run_plan` will do: per type, the steps whose cells are missing."""

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
    build_probe: Callable = build_run_probe,
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
            probes[name] = build_probe(name, run_dir, info, config)
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
    return [t.name for t in list_types() if t.requires in (None, config.head) and not t.opt_in and _sized(t, config)]


def _sized(dst: DerivedScalarType, config: ModelConfig) -> bool:
    """False when one of the type's model dims has no size for `config` (neurons of an attention-only model)."""
    try:
        for d in dst.dims:
            if d not in (POS, QUERY_POS, KEY_POS):
                dim_size(d, config, None, dst.sizes)
    except ValueError:
        return False
    return True


def plan_runs(run_dirs: Sequence[str], types: Sequence[str], *, all_types: bool = False, steps: str | None = None,
              probe: str | None = None, force: bool = False,
              options: Mapping[str, Mapping[str, Any]] | None = None,
              build_probe: Callable = build_run_probe) -> list[ComputePlan]:
    """Expand globs and plan every run (nothing written); any bad run or request fails before work starts."""
    if all_types and types:
        raise ValueError("pass either --type NAME ... or --all, not both")
    plans = []
    for d in expand_run_dirs(run_dirs):
        names, built = expand_type_names(types), None
        if all_types:
            names, built = _buildable(d, applicable_types(load_run_model_config(d)[1]), probe, build_probe)
        plans.append(plan_compute(d, names, steps=steps, probe=probe, force=force, options=options,
                                  built_probes=built, build_probe=build_probe))
    return plans


def _buildable(run_dir: Path, names: list[str], probe: str | None,
               build_probe: Callable) -> tuple[list[str], dict[str, Any]]:
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
                built[probe_name] = build_probe(probe_name, run_dir, info, config)
            except ValueError:
                refused.add(probe_name)
        if probe_name in built:
            keep.append(name)
    return keep, built
