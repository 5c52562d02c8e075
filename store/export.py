"""Scalars for people outside the xarray world: one netCDF-4 file, or one long-format CSV.

CSV columns: ``run`` (several runs only), ``step``, every dim any type has (``layer``, ``head``,
``src_layer``, ...; empty where a type lacks it), ``type``, ``value``; only computed cells, so a row
is there exactly when its cell was computed, and a computed cell whose value is NaN (e.g. a patching
cell whose pair does not separate) reads ``NaN``. Integer coordinates stay integers.
netCDF keeps the Dataset as is (run config coords included), attrs made netCDF-safe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._runs import resolve_runs
from .dims import RUN, STEP
from .scalars_open import open_scalars
from .scalars_store import SCALARS
from .remedies import remedy

__all__ = ["FORMATS", "export_scalars", "scalars_long_frame", "netcdf_safe"]

FORMATS = {"netcdf": ".nc", "csv": ".csv"}


def _safe_attr(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and value and (all(isinstance(v, str) for v in value) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return list(value)
    return json.dumps(value, default=str)


def netcdf_safe(ds: xr.Dataset) -> xr.Dataset:
    """A copy whose attrs are netCDF types (others JSON-encoded) and whose object coords are strings."""
    out = ds.copy()
    out.attrs = {k: _safe_attr(v) for k, v in ds.attrs.items()}
    for name in list(out.variables):
        var = out[name]
        var.attrs = {k: _safe_attr(v) for k, v in var.attrs.items()}
        if var.dtype == object:
            text = np.array(["" if v is None else str(v) for v in np.ravel(var.values)], dtype=str).reshape(var.shape)
            out = out.assign_coords({name: (var.dims, text, var.attrs)}) if name in out.coords else \
                out.assign({name: (var.dims, text, var.attrs)})
    return out


def scalars_long_frame(ds: xr.Dataset, computed: xr.Dataset | None = None) -> pd.DataFrame:
    """Long table of the computed cells: [run,] step, <dims...>, type, value. `computed` holds each
    type's mask (``computed__NAME``, from ``open_scalars(..., with_masks=True)``): a cell is listed
    when it is computed, NaN value or not; without it, cells whose value is NaN are left out."""
    dims: list[str] = []
    for name in ds.data_vars:
        dims += [str(d) for d in ds[name].dims if d not in (RUN, STEP) and d not in dims]
    lead = [RUN, STEP] if RUN in ds.dims else [STEP]
    frames = []
    for name in sorted(ds.data_vars):
        da = ds[name].reset_coords(drop=True)
        mask = None if computed is None else computed.get(f"computed__{name}")
        if mask is None:
            frame = da.to_dataframe(name="value").reset_index().dropna(subset=["value"])
        else:
            keep = mask.reset_coords(drop=True).broadcast_like(da).rename("computed")
            frame = xr.merge([da.rename("value"), keep]).to_dataframe().reset_index()
            frame = frame[frame["computed"].fillna(False).astype(bool)].drop(columns="computed")
        frame["type"] = str(name)
        frames.append(frame)
    columns = lead + dims + ["type", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for col in [STEP, *dims]:
        if pd.api.types.is_float_dtype(table[col]) or pd.api.types.is_integer_dtype(table[col]):
            table[col] = table[col].astype("Int64")
    return table


def _csv_frame(ds: xr.Dataset, runs: list, multi: bool) -> pd.DataFrame:
    """The long table, built run by run (each run's own coords: no cells padded in by alignment)."""
    names = list(ds.data_vars)
    if not multi:
        return scalars_long_frame(ds, open_scalars(runs[0], with_masks=True))
    frames = []
    for label, run in zip(ds[RUN].values, runs):
        one = open_scalars(run)
        present = [n for n in names if n in one.data_vars]
        frame = scalars_long_frame(one[present], open_scalars(run, with_masks=True))
        frame.insert(0, RUN, label)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    lead = [RUN, STEP]
    rest = [c for c in table.columns if c not in lead + ["type", "value"]]
    return table[lead + rest + ["type", "value"]]


def export_scalars(path_or_paths: Any, out: str | os.PathLike[str] | None = None, fmt: str | None = None,
                   types: list[str] | None = None) -> Path:
    """Write a run's (or several runs') scalars to ``out`` as netCDF-4 or CSV; returns the path.

    ``fmt`` defaults from the suffix of ``out`` (.nc / .csv); ``out`` defaults to
    ``RUN_DIR/scalars.<ext>`` for one run; ``types`` keeps only those scalars. The file is written
    whole or not at all.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if fmt is None:
        suffix = Path(out).suffix.lower() if out is not None else ""
        fmt = next((f for f, s in FORMATS.items() if s == suffix), None)
        if fmt is None:
            raise ValueError(f"the export format is not known; {remedy('export_format')}")
    runs, multi = resolve_runs(path_or_paths, SCALARS)
    ds = open_scalars(runs if multi else runs[0])
    if types:
        unknown = [t for t in types if t not in ds.data_vars]
        if unknown:
            raise KeyError(f"scalar '{unknown[0]}' is not stored (stored: {', '.join(sorted(ds.data_vars)) or 'none'}); "
                           f"{remedy('export_type')}")
        ds = ds[list(dict.fromkeys(types))]
    if out is None:
        if multi:
            raise ValueError("several runs need an output file; pass -o FILE")
        out = Path(runs[0]) / f"scalars{FORMATS[fmt]}"
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output '{out}' is a directory; pass a file name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder '{out.parent}' of output '{out}' does not exist; create it first")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "netcdf":
            netcdf_safe(ds).to_netcdf(tmp, engine="h5netcdf")
        else:
            single = all(ds[v].dtype.itemsize <= 4 for v in ds.data_vars)
            _csv_frame(ds, runs, multi).to_csv(tmp, index=False, float_format="%.9g" if single else "%.17g",
                                               na_rep="NaN")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
