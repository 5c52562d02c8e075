"""Resolve run-directory arguments (path, list, glob) and combine per-run Datasets along ``run``."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .dims import RUN
from .errors import StoreError
from .run import is_run_dir, read_run_json

__all__ = ["resolve_runs", "run_labels", "config_coords", "concat_runs", "flatten", "register_coord_reader"]

_GLOB_CHARS = "*?["
CoordReader = Callable[[Mapping[str, Any]], Mapping[str, Any]]
_COORD_READERS: list[CoordReader] = []


def register_coord_reader(read: CoordReader) -> None:
    """Register ``read(run_json) -> {short name: value}``: run coords of run.json files that carry no
    ``coords`` of their own (written before it existed), from the package that knows their config."""
    if read not in _COORD_READERS:
        _COORD_READERS.append(read)


def resolve_runs(spec: Any, marker: str) -> tuple[list[str], bool]:
    """(run dirs, several?) from a path, a glob string, or a list of paths/globs.

    A glob keeps the matching directories that are run dirs or hold ``marker``; a single
    non-glob path gives one run (no ``run`` dim), a list or a glob always gives a ``run`` dim.
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if not any(c in text for c in _GLOB_CHARS):
            return [text], False
        items: Sequence[Any] = [text]
    else:
        items = list(spec)
    runs: list[str] = []
    for item in items:
        text = os.fspath(item)
        if any(c in text for c in _GLOB_CHARS):
            found = [p for p in sorted(glob.glob(os.path.expanduser(text)))
                     if os.path.isdir(p) and (is_run_dir(p) or os.path.exists(os.path.join(p, marker)))]
            if not found:
                raise StoreError(f"no run directories match '{text}'; check the path or quote the glob")
            runs.extend(found)
        else:
            runs.append(text)
    if not runs:
        raise StoreError("no run directories given; pass at least one run directory or glob")
    return list(dict.fromkeys(os.path.normpath(r) for r in runs)), True


def run_labels(runs: Sequence[str]) -> list[str]:
    """Run coord labels: directory names, or paths relative to their common parent if names repeat."""
    names = [os.path.basename(os.path.abspath(r)) for r in runs]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([os.path.abspath(r) for r in runs])
    return [os.path.relpath(os.path.abspath(r), common) for r in runs]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value} for scalar leaves (str, int, float, bool)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        elif isinstance(value, (str, int, float, bool)) and not isinstance(value, type(None)):
            out[path] = value
    return out


def _run_config(run_dir: str) -> dict[str, Any]:
    if not is_run_dir(run_dir):
        return {}
    info = read_run_json(run_dir)
    config = info.get("config", {})
    flat = flatten(config) if isinstance(config, Mapping) else {}
    coords = info.get("coords")  # the short names its writer gave the run (seed, n_layers, ...)
    for named in [coords] if isinstance(coords, Mapping) else [read(info) for read in _COORD_READERS]:
        for key, value in flatten(named).items():
            flat.setdefault(key, value)
    sweep = info.get("sweep")  # a sweep's values under the names it was swept by (`scalars train --sweep`)
    if isinstance(sweep, Mapping):
        for key, value in flatten(sweep).items():
            flat.setdefault(key, value)
    return flat


def _coord_array(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return np.array(values, dtype=bool if len(present) == len(values) else object)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return np.array(values, dtype=np.int64)
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if len(present) == len(values):
        return np.array([str(v) for v in values])
    return np.array([None if v is None else str(v) for v in values], dtype=object)


def config_coords(runs: Sequence[str], reserved: set[str]) -> dict[str, np.ndarray]:
    """Config values of each run (flattened ``config`` plus aliases) as arrays over runs."""
    configs = [_run_config(r) for r in runs]
    keys = list(dict.fromkeys(k for c in configs for k in c if k not in reserved))
    return {k: _coord_array([c.get(k) for c in configs]) for k in keys}


def concat_runs(datasets: Sequence[xr.Dataset], runs: Sequence[str]) -> xr.Dataset:
    """Concatenate per-run Datasets along a new ``run`` dim (outer join, NaN fill), config as coords."""
    labels = run_labels(runs)
    combined = xr.concat(
        list(datasets), dim=pd.Index(labels, name=RUN), data_vars="all", coords="minimal",
        compat="override", join="outer", fill_value=np.nan, combine_attrs="drop_conflicts",
    )
    reserved = {RUN, *map(str, combined.dims), *map(str, combined.variables)}
    coords = config_coords(runs, reserved)
    combined = combined.assign_coords({k: (RUN, v) for k, v in coords.items()})
    combined.attrs["runs"] = [os.path.abspath(r) for r in runs]
    return combined
