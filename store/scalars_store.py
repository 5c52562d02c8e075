"""Scalar store ``RUN_DIR/scalars.zarr``: an xarray Dataset with one chunk per (variable, step) cell.

Writing a cell writes its value chunk, then its mask chunk, so a crash never exposes a partial
cell; concurrent writers of one cell write equal values and need no lock. Metadata changes
(new variables, a longer step axis) hold ``RUN_DIR/scalars.zarr.lock`` exclusively; readers take
it shared while they read metadata. (A lock file inside the zarr folder would make zarr warn.)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _zarr_io as zio
from ._files import exclusive_lock, shared_lock, stale_temp_files
from ._schema import (MASK_PREFIX, STRING_COORDS_ATTR, VariableSpec, as_steps, coord_values, fmt_dims,
                      mask_name)
from .dims import STEP
from .errors import StoreError
from .remedies import remedy

__all__ = ["SCALARS", "VariableSpec", "check_variables", "ensure_variables", "commit_replacements",
           "discard_replacements", "write_cells", "clear_cells", "computed_mask", "missing_steps", "stored_steps"]

SCALARS = "scalars.zarr"
_STEP_CHUNK = 1024
# A recompute of a variable whose definition changed writes to a staged copy named STAGED_PREFIX + name
# (and its mask); the copy replaces the variable only when every cell of the request is computed.
STAGED_PREFIX = "_staged__"
_SWAP_PENDING = "swap_pending"  # attr of a staged mask: the swap into place has begun (finish it)


def _root(run_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(run_dir), SCALARS)


def _lock_path(run_dir: str | os.PathLike[str]) -> str:
    return _root(run_dir) + ".lock"


def _open(run_dir: str | os.PathLike[str], mode: str = "r") -> Any:
    if not zio.group_exists(_root(run_dir)):
        raise FileNotFoundError(f"'{run_dir}' has no {SCALARS}; {remedy('compute_first', run=str(run_dir))}")
    return zio.open_group(_root(run_dir), mode)


def _read_steps(group: Any) -> np.ndarray:
    arr = zio.get_array(group, STEP)
    if arr is None:
        raise StoreError(f"'{group.store}' has no step coordinate; {remedy('compute_again')}")
    steps = np.asarray(arr[:], dtype=np.int64)
    valid = np.flatnonzero(steps != -1)  # trailing -1: a step axis growth that did not finish
    return steps[: int(valid[-1]) + 1] if valid.size else steps[:0]


def _stored_coord(group: Any, dim: str) -> np.ndarray | None:
    text = zio.attrs(group).get(STRING_COORDS_ATTR, {})
    if dim in text:
        return np.array(text[dim], dtype=object)
    arr = zio.get_array(group, dim)
    return None if arr is None else coord_values(arr[:], f"stored coord '{dim}'")


def internal_array(name: str) -> bool:
    """A mask or a staged replacement: stored arrays that are not scalars of their own."""
    return name.startswith((MASK_PREFIX, STAGED_PREFIX))


def _variables(group: Any) -> dict[str, Any]:
    return {k: a for k, a in zio.list_arrays(group).items()
            if not internal_array(k) and zio.dimension_names(a)[:1] == (STEP,) and a.ndim >= 1 and k != STEP}


_MISMATCH = {  # attr -> (what differs, how to keep the stored cells instead of recomputing)
    "probe_hash": ("computed on another probe (probe hash {stored!r}, now {new!r})",
                   "stored_probe"),
    "version": ("stored with version {stored}, the registered type is version {new}", None),
    "definition": ("stored from another definition of the type (its code changed since; fingerprint "
                   "{stored!r}, now {new!r})", "restore_definition"),
    "options": ("stored with options {stored}, got {new}", "stored_options"),
}


def _check_existing(spec: VariableSpec, arr: Any) -> None:
    dims, sizes = zio.dimension_names(arr)[1:], tuple(arr.shape[1:])
    if dims != spec.dims or sizes != spec.sizes:
        got, want = (fmt_dims(dims), fmt_dims(spec.dims)) if dims != spec.dims else \
            (fmt_dims(dims, sizes), fmt_dims(spec.dims, spec.sizes))
        raise StoreError(f"scalar '{spec.name}' is stored with dims {got}, got {want}; {remedy('force_or_rename')}")
    stored = zio.attrs(arr)
    for key, (what, keep) in _MISMATCH.items():
        if key in stored and key in spec.attrs and stored[key] != spec.attrs[key]:
            keep = f", or {remedy(keep)}" if keep else ""
            raise StoreError(f"scalar '{spec.name}' is {what.format(stored=stored[key], new=spec.attrs[key])}; "
                             f"{remedy('force')}{keep}")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype.kind == b.dtype.kind and bool(np.all(a == b))


def _plan_coords(group: Any, specs: Sequence[VariableSpec], reset: set[str]) -> dict[str, np.ndarray]:
    """Coords to (re)write; refuse a change to a coord still used by another stored variable."""
    users: dict[str, list[str]] = {}
    for name, arr in _variables(group).items():
        if name not in reset:
            for d in zio.dimension_names(arr)[1:]:
                users.setdefault(d, []).append(name)
    names = set(_variables(group)) | {s.name for s in specs}
    wanted: dict[str, tuple[str, np.ndarray]] = {}
    for spec in specs:
        clash = names.intersection(spec.dims)
        if clash:
            raise StoreError(f"scalar '{spec.name}' has dim '{clash.pop()}', which is also a scalar's name; "
                             "rename the dim or the scalar")
        for d in spec.dims:
            values = spec.coords[d]
            if d in wanted and not _same(wanted[d][1], values):
                raise StoreError(f"scalars '{wanted[d][0]}' and '{spec.name}' give different coords for "
                                 f"dim '{d}'; pass the same coords for a shared dim")
            wanted[d] = (spec.name, values)
    out = {}
    for d, (name, values) in wanted.items():
        stored = _stored_coord(group, d)
        if stored is not None and _same(stored, values):
            continue
        if stored is not None and users.get(d):
            raise StoreError(f"dim '{d}' is stored with {len(stored)} coords {stored.tolist()[:8]} (used by "
                             f"'{users[d][0]}'), scalar '{name}' gives {len(values)} {values.tolist()[:8]}; "
                             f"{remedy('force_dim')}")
        out[d] = values
    return out


def _write_coord(group: Any, dim: str, values: np.ndarray) -> None:
    text = zio.attrs(group).get(STRING_COORDS_ATTR, {})
    zio.delete_node(group, dim)
    text.pop(dim, None)
    if values.dtype == object:
        text[dim] = values.tolist()
    else:
        arr = zio.create_array(group, dim, shape=values.shape, chunks=(max(1, values.size),),
                               dtype=values.dtype, fill_value=0, dimension_names=(dim,))
        arr[:] = values
    group.attrs.update({STRING_COORDS_ATTR: text})


def _grow_steps(group: Any, stored: np.ndarray, steps: np.ndarray) -> np.ndarray:
    new = np.setdiff1d(steps, stored)
    if not new.size:
        return stored
    if stored.size and new[0] < stored[-1]:
        between = new[new < stored[-1]]
        raise StoreError(f"steps {between.tolist()[:5]} fall between steps already in {SCALARS} (last "
                         f"{int(stored[-1])}); the step axis only grows at its end, so write to a new "
                         "run directory or add only later steps")
    total = np.concatenate([stored, new])
    for name, arr in zio.list_arrays(group).items():
        if name != STEP and zio.dimension_names(arr)[:1] == (STEP,):
            zio.resize(arr, (total.size, *arr.shape[1:]))
    step_arr = zio.get_array(group, STEP)
    zio.resize(step_arr, (total.size,))  # the step coord grows last
    step_arr[stored.size:] = new
    return total


def _create_variable(group: Any, spec: VariableSpec, n_steps: int, name: str | None = None) -> None:
    name = name or spec.name
    zio.create_array(group, name, shape=(n_steps, *spec.sizes), chunks=(1, *(max(1, s) for s in spec.sizes)),
                     dtype=spec.dtype, fill_value=np.nan, dimension_names=(STEP, *spec.dims),
                     attributes=dict(spec.attrs), overwrite=True)
    zio.create_array(group, mask_name(name), shape=(n_steps,), chunks=(1,), dtype="uint8", fill_value=0,
                     dimension_names=(STEP,), attributes={"mask_of": spec.name}, compress=False, overwrite=True)


def _swap_in(group: Any, root: str, name: str) -> None:
    """Replace variable ``name`` by its staged copy. Idempotent, so a swap cut short by a crash is
    finished by the next writer: the old mask goes first (its cells then read as uncomputed, never as
    values of the other definition), the staged mask is renamed last."""
    staged = STAGED_PREFIX + name
    if zio.get_array(group, mask_name(staged)) is None:
        return
    zio.get_array(group, mask_name(staged)).attrs.update({_SWAP_PENDING: True})
    zio.delete_node(group, mask_name(name))
    if zio.get_array(group, staged) is not None:
        zio.delete_node(group, name)
        zio.rename_node(root, staged, name)
    zio.rename_node(root, mask_name(staged), mask_name(name))
    mask = zio.open_group(root, "r+")[mask_name(name)]
    mask.attrs.update({_SWAP_PENDING: False})


STALE_AFTER_S = 600.0  # a temporary chunk file this old is a killed writer's (a live one's lasts milliseconds)


def _remove_stale_temps(root: str) -> None:
    """Delete temporary files killed writers left (other computes may be writing now: only old ones)."""
    now = time.time()
    for path in stale_temp_files(root):
        with contextlib.suppress(FileNotFoundError):
            if now - os.path.getmtime(path) > STALE_AFTER_S:
                os.unlink(path)


def _finish_swaps(group: Any, root: str) -> None:
    """Finish every swap that a killed process began (see ``_swap_in``)."""
    for key, arr in zio.list_arrays(group).items():
        if key.startswith(MASK_PREFIX + STAGED_PREFIX) and zio.attrs(arr).get(_SWAP_PENDING):
            _swap_in(group, root, key[len(MASK_PREFIX + STAGED_PREFIX):])


def check_variables(run_dir: str | os.PathLike[str], specs: Sequence[VariableSpec]) -> None:
    """Read-only: StoreError if a stored variable named in ``specs`` differs in dims, sizes, probe
    hash, version or options (what ``ensure_variables`` would refuse without ``force``)."""
    if not zio.group_exists(_root(run_dir)):
        return
    with shared_lock(_lock_path(run_dir)):
        existing = _variables(zio.open_group(_root(run_dir), "r"))
        for spec in specs:
            if spec.name in existing:
                _check_existing(spec, existing[spec.name])


def ensure_variables(run_dir: str | os.PathLike[str], specs: Sequence[VariableSpec], steps: Any, *,
                     force: bool = False) -> dict[str, str]:
    """Create ``scalars.zarr``, its step axis (grown to include ``steps``) and the given variables;
    return, per spec, the array its cells are to be written to (``write_cells``).

    A stored variable must match its spec (dims, sizes, probe hash, version, definition, options),
    else StoreError. With ``force`` (the caller recomputes the requested cells) a matching variable
    is kept as it is, its recomputed cells overwritten one by one with fresh values; a variable
    whose definition differs gets a staged copy as its target, which ``commit_replacements`` swaps
    in once every requested cell is computed and ``discard_replacements`` drops on failure, so a
    failed recompute leaves every stored cell as it was. Validates everything before changing anything.
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory '{run_dir}' does not exist; pass an existing run directory")
    steps = np.unique(as_steps(steps))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise StoreError(f"scalar names {names} repeat; pass each scalar once")
    with exclusive_lock(_lock_path(run_dir)):
        group = zio.open_group(_root(run_dir), "a")
        _finish_swaps(group, _root(run_dir))
        _remove_stale_temps(_root(run_dir))
        if zio.get_array(group, STEP) is None:
            zio.create_array(group, STEP, shape=(steps.size,), chunks=(_STEP_CHUNK,), dtype="int64",
                             fill_value=-1, dimension_names=(STEP,))
            zio.get_array(group, STEP)[:] = steps
            group.attrs.update({"kind": "scalar_store"})
        stored = _read_steps(group)
        existing = _variables(group)
        replace = set()
        for spec in specs:
            if spec.name in existing:
                try:
                    _check_existing(spec, existing[spec.name])
                except StoreError:
                    if not force:
                        raise
                    replace.add(spec.name)
        coords = _plan_coords(group, specs, replace)
        total = _grow_steps(group, stored, steps)
        for dim, values in coords.items():
            _write_coord(group, dim, values)
        targets = {}
        for spec in specs:
            targets[spec.name] = STAGED_PREFIX + spec.name if spec.name in replace else spec.name
            if spec.name not in existing or spec.name in replace:
                _create_variable(group, spec, total.size, targets[spec.name])
            elif zio.get_array(group, mask_name(spec.name)) is None:  # a creation cut short
                zio.create_array(group, mask_name(spec.name), shape=(total.size,), chunks=(1,), dtype="uint8",
                                 fill_value=0, dimension_names=(STEP,), attributes={"mask_of": spec.name},
                                 compress=False)
        return targets


def commit_replacements(run_dir: str | os.PathLike[str], targets: Mapping[str, str]) -> dict[str, int]:
    """Swap every staged copy in ``targets`` (from ``ensure_variables``) into place; returns, per
    replaced variable, how many cells of its old definition were dropped because the recompute did
    not cover their steps."""
    staged = {n: t for n, t in targets.items() if t != n}
    if not staged:
        return {}
    dropped = {}
    with exclusive_lock(_lock_path(run_dir)):
        root = _root(run_dir)
        group = zio.open_group(root, "r+")
        for name, target in staged.items():
            old, new = zio.get_array(group, mask_name(name)), zio.get_array(group, mask_name(target))
            if new is None:
                continue
            n = min(old.shape[0], new.shape[0]) if old is not None else 0
            if n:
                was, now = zio.read_many([(old, slice(0, n)), (new, slice(0, n))])
                dropped[name] = int(np.sum((was == 1) & (now != 1)))
            _swap_in(group, root, name)
    return {k: v for k, v in dropped.items() if v}


def discard_replacements(run_dir: str | os.PathLike[str], targets: Mapping[str, str]) -> None:
    """Drop the staged copies in ``targets`` (a recompute that failed): the stored variables stay as they were."""
    staged = [t for n, t in targets.items() if t != n]
    if not staged or not zio.group_exists(_root(run_dir)):
        return
    with exclusive_lock(_lock_path(run_dir)):
        group = zio.open_group(_root(run_dir), "r+")
        for target in staged:
            zio.delete_node(group, mask_name(target))
            zio.delete_node(group, target)


def _handles(run_dir: str | os.PathLike[str], name: str, mode: str = "r+") -> tuple[np.ndarray, Any, Any]:
    with shared_lock(_lock_path(run_dir)):
        group = _open(run_dir, mode)
        stored = _read_steps(group)
        var, mask = zio.get_array(group, name), zio.get_array(group, mask_name(name))
    if var is None or mask is None or name.startswith(MASK_PREFIX):
        have = sorted(_variables(group))
        raise KeyError(f"scalar '{name}' is not in '{_root(run_dir)}' (have: {have}); call ensure_variables "
                       "with its spec first")
    return stored, var, mask


def _slots(stored: np.ndarray, steps: np.ndarray, root: str) -> np.ndarray:
    idx = np.searchsorted(stored, steps)
    idx_c = np.minimum(idx, max(stored.size - 1, 0))
    bad = steps[(idx >= stored.size) | (stored[idx_c] != steps)] if stored.size else steps
    if bad.size:
        raise StoreError(f"steps {bad.tolist()[:5]} are not on the step axis of '{root}'; call "
                         "ensure_variables with them first")
    return idx


def _runs(slots: np.ndarray) -> list[tuple[int, int, int]]:
    """Split sorted-or-not slots into (position in input, first slot, count) runs of consecutive slots."""
    out: list[tuple[int, int, int]] = []
    for i, s in enumerate(slots.tolist()):
        if out and s == out[-1][1] + out[-1][2] and i == out[-1][0] + out[-1][2]:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((i, s, 1))
    return out


def write_cells(run_dir: str | os.PathLike[str], name: str, steps: Sequence[int], values: Any) -> None:
    """Write scalar ``name`` at ``steps`` (values shaped ``(len(steps), *dims)``), then mark them computed."""
    steps_arr = as_steps(steps)
    if np.unique(steps_arr).size != steps_arr.size:
        raise StoreError(f"steps {steps_arr.tolist()[:8]} repeat; write each cell once per call")
    stored, var, mask = _handles(run_dir, name)
    values = np.asarray(values)
    want = (steps_arr.size, *var.shape[1:])
    if values.shape != want:
        raise StoreError(f"values for scalar '{name}' have shape {values.shape}, expected {want} "
                         f"(len(steps), {', '.join(zio.dimension_names(var)[1:])}); pass one cell per step")
    values = values.astype(var.dtype, copy=False)
    slots = _slots(stored, steps_arr, _root(run_dir))
    runs = _runs(slots)
    zio.write_many([(var, slice(s, s + n), values[i:i + n]) for i, s, n in runs])
    zio.write_many([(mask, slice(s, s + n), np.ones(n, np.uint8)) for _, s, n in runs])


def clear_cells(run_dir: str | os.PathLike[str], name: str, steps: Sequence[int]) -> None:
    """Mark cells of ``name`` at ``steps`` uncomputed (e.g. after ``verify_scalars`` found them corrupt)."""
    steps_arr = as_steps(steps)
    stored, _, mask = _handles(run_dir, name)
    slots = _slots(stored, steps_arr, _root(run_dir))
    zio.write_many([(mask, slice(s, s + n), np.zeros(n, np.uint8)) for _, s, n in _runs(slots)])


def stored_steps(run_dir: str | os.PathLike[str]) -> np.ndarray:
    """The step axis of ``scalars.zarr`` (int64, ascending)."""
    with shared_lock(_lock_path(run_dir)):
        return _read_steps(_open(run_dir))


def computed_mask(run_dir: str | os.PathLike[str], name: str) -> np.ndarray:
    """Bool per stored step: True where the cell of ``name`` is computed."""
    stored, _, mask = _handles(run_dir, name, "r")
    (raw,) = zio.read_many([(mask, slice(0, stored.size))])
    return raw == 1


def missing_steps(run_dir: str | os.PathLike[str], name: str, steps: Sequence[int]) -> np.ndarray:
    """The subset of ``steps`` (order kept) whose cell of ``name`` is not computed (or not stored)."""
    steps_arr = as_steps(steps)
    if not zio.group_exists(_root(run_dir)):
        return steps_arr
    try:
        stored, var, mask = _handles(run_dir, name, "r")
    except KeyError:
        return steps_arr
    slots = np.flatnonzero(zio.read_many([(mask, slice(0, stored.size))])[0] == 1)
    zeros = (0,) * (var.ndim - 1)  # a cell marked computed whose value chunk is gone is missing again
    slots = [i for i in slots.tolist() if os.path.isfile(zio.chunk_file(_root(run_dir), var, (i, *zeros)))]
    return steps_arr[~np.isin(steps_arr, stored[slots])]
