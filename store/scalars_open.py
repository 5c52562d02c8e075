"""Reading the scalar store: one run's ``scalars.zarr``, or many runs', as a lazy xarray Dataset.

Built from zarr metadata (dims, coords, attrs); values are dask arrays that read only computed
cells, and a computed cell whose chunk is missing or damaged is an error naming the variable and
step, never a fill value shown as data.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import _zarr_io as zio
from ._files import shared_lock
from ._runs import concat_runs, resolve_runs
from ._schema import MASK_PREFIX, STRING_COORDS_ATTR, mask_name
from .dims import STEP
from .errors import StoreError
from .scalars_store import SCALARS, STAGED_PREFIX, _lock_path, _open, _read_steps, _root
from .remedies import remedy

__all__ = ["open_scalars"]


class _CheckedCells:
    """Array-like (for dask) over one scalar variable's first ``len(steps)`` cells: computed cells are
    read and must be intact, so a missing or damaged chunk is a StoreError naming the variable and
    step, never a fill value shown as data; uncomputed cells (or all, without a mask) read as NaN."""

    def __init__(self, var: Any, mask: Any | None, name: str, steps: np.ndarray, run_dir: str) -> None:
        self.var, self.mask, self.name, self.steps, self.run_dir = var, mask, name, steps, run_dir
        self.shape = (steps.size, *var.shape[1:])
        self.ndim, self.dtype = len(self.shape), np.dtype(var.dtype)

    def _damaged(self, slot: int, exc: BaseException) -> StoreError:
        step, missing = int(self.steps[slot]), isinstance(exc, FileNotFoundError)
        why = "its value chunk is missing" if missing else f"its value chunk is damaged ({type(exc).__name__}: " \
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})"
        fix = remedy("recompute_missing_cell" if missing else "recompute_damaged_cell", run=str(self.run_dir),
                     name=self.name, step=step)
        return StoreError(f"scalar '{self.name}' at step {step} of {self.run_dir} is marked computed but {why}; "
                          f"{fix} ({remedy('verify_scalars', run=str(self.run_dir))})")

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        start, stop, _ = key[0].indices(self.shape[0]) if isinstance(key[0], slice) else (key[0], key[0] + 1, 1)
        out = np.full((max(0, stop - start), *self.shape[1:]), np.nan, self.dtype)
        if self.mask is not None and stop > start:
            (flags,) = zio.read_many([(self.mask, slice(start, stop))])
            slots = (start + np.flatnonzero(np.asarray(flags) == 1)).tolist()
            values = zio.read_many([(self.var, s) for s in slots], return_exceptions=True, missing_ok=False)
            for slot, value in zip(slots, values):
                if isinstance(value, BaseException):
                    raise self._damaged(slot, value)
                out[slot - start] = value
        rest = key[1:]
        return out[(slice(None), *rest)] if isinstance(key[0], slice) else out[(0, *rest)]


def _open_one(run_dir: str, *, computed_only: bool, with_masks: bool, steps_per_chunk: int) -> xr.Dataset:
    """One run's store as a lazy Dataset, built from zarr metadata (dims, coords, attrs)."""
    root = _root(run_dir)
    with shared_lock(_lock_path(run_dir)):
        group = _open(run_dir)
        arrays = zio.list_arrays(group)
        text = zio.attrs(group).get(STRING_COORDS_ATTR, {})
        steps = _read_steps(group)
    n, token = steps.size, uuid.uuid4().hex[:8]
    coords: dict[str, Any] = {STEP: steps}
    coords.update({d: np.array(v, dtype=object) for d, v in text.items()})
    for name, arr in arrays.items():
        if name != STEP and zio.dimension_names(arr) == (name,):
            coords[name] = np.asarray(arr[:])
    lazy: dict[str, tuple[tuple[str, ...], Any, dict[str, Any]]] = {}
    for name, arr in sorted(arrays.items()):
        dims = zio.dimension_names(arr)
        if name in coords or dims[:1] != (STEP,) or name.startswith((STAGED_PREFIX, mask_name(STAGED_PREFIX))):
            continue
        chunks = (max(1, min(steps_per_chunk, n)), *arr.shape[1:])
        data = zio.lazy_array(arr, chunks, name=f"scalars-{name}-{token}")[:n]  # longer: an unfinished growth
        lazy[name] = (dims, data, zio.attrs(arr))
    data_vars = {}
    for name, (dims, data, attrs) in lazy.items():
        if name.startswith(MASK_PREFIX):
            if with_masks:
                data_vars[name] = xr.Variable(dims, data == 1, attrs=attrs)
            continue
        if computed_only:  # only computed cells are read, and those must be intact
            cells = _CheckedCells(arrays[name], arrays.get(mask_name(name)), name, steps, os.fspath(run_dir))
            data = da.from_array(cells, chunks=data.chunks, name=f"scalars-checked-{name}-{token}", lock=False,
                                 asarray=False, fancy=False, inline_array=True,
                                 meta=np.empty((0,) * data.ndim, data.dtype))
        data_vars[name] = xr.Variable(dims, data, attrs=attrs)
    return xr.Dataset(data_vars, coords=coords, attrs={"source": root})


def open_scalars(path_or_paths: Any, *, computed_only: bool = True, with_masks: bool = False,
                 steps_per_chunk: int = 256) -> xr.Dataset:
    """Open scalars lazily (dask); a list or glob of run dirs is concatenated along ``run``.

    Uncomputed cells are NaN (``computed_only`` also hides cells whose mask is unset); masks
    are dropped unless ``with_masks`` (bool ``computed__<name>``). Multi-run datasets carry each
    run's config values as ``run`` coords (``seed``, ``n_layers``, ...) and pad sizes with NaN.
    """
    runs, multi = resolve_runs(path_or_paths, SCALARS)
    for r in runs:
        if not zio.group_exists(_root(r)):
            raise FileNotFoundError(f"'{r}' has no {SCALARS}; {remedy('compute_first', run=str(r))}")
    dss = [_open_one(r, computed_only=computed_only, with_masks=with_masks, steps_per_chunk=steps_per_chunk)
           for r in runs]
    if not multi:
        return dss[0]
    out = concat_runs(dss, runs)
    if with_masks:
        for v in [v for v in out.data_vars if str(v).startswith(MASK_PREFIX)]:
            out[v] = out[v].fillna(False).astype(bool)
    return out
