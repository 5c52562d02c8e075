"""Integrity checks of a run's stores; each returns problem sentences (empty list = all good).

Every sentence names the step and the array and says what to do; nothing here raises on
corrupted, truncated or deleted chunk files. Every shard file's index (size, crc32c, entries within
the file) is checked too, whether or not it holds a committed checkpoint: a damaged one is named
with the checkpoint steps it holds. What a killed writer left and the next writer clears (temporary
files, a shard whose index was never written and which holds no committed checkpoint) is not a
problem: it goes to ``notes``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _files as files
from . import _zarr_io as zio
from ._schema import mask_name
from .checkpoints import ARCHIVE, leaf_crc32
from .dims import STEP
from .errors import StoreError
from .references import has_references, verify_references
from .scalars_store import SCALARS, internal_array
from .remedies import remedy

__all__ = ["verify_archive", "verify_scalars"]

_RESTORE = "restore the run from a copy or retrain from the last good step"


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _read_1d(arr: Any, n: int, what: str, problems: list[str]) -> np.ndarray | None:
    """Read ``arr[:n]`` slot by slot, reporting unreadable slots; None if any failed."""
    values = zio.read_many([(arr, i) for i in range(n)], return_exceptions=True)
    bad = [(i, v) for i, v in enumerate(values) if isinstance(v, BaseException)]
    for i, e in bad:
        problems.append(f"{what} entry {i} is unreadable ({_err(e)}); {_RESTORE}")
    return None if bad else np.array([np.asarray(v).reshape(()) for v in values])


def _shard_problems(root: str, arrays: dict[str, Any], steps: np.ndarray | None, problems: list[str],
                    notes: list[str]) -> None:
    """Check the index of every shard file of ``arrays`` ({name: array}); ``steps`` are the committed
    steps by slot (None if the commit record is unreadable)."""
    resume = remedy("resume", run=os.path.dirname(root))
    for name, arr in arrays.items():
        for path, slots, state, detail in zio.shard_file_states(root, arr):
            if state == "ok":
                continue
            if steps is None:
                held = f"the commit records of slots {slots.start}..{slots.stop - 1}"
            else:
                mine = steps[slots.start:slots.stop].tolist()
                held = ("the checkpoints at steps " + ", ".join(map(str, mine))) if mine else ""
            if state == "unwritten" and not held:
                notes.append(f"shard file {path} of array '{name}' holds no checkpoint yet ({detail}); {resume} "
                             "replaces it")
            elif not held:
                problems.append(f"shard file {path} of array '{name}' {detail}; it holds no committed checkpoint: "
                                f"delete it; {resume} rewrites it (nothing committed is lost)")
            else:
                problems.append(f"shard file {path} of array '{name}' {detail}; it holds {held}; {_RESTORE}")


def verify_archive(run_dir: str | os.PathLike[str], notes: list[str] | None = None) -> list[str]:
    """Check every committed checkpoint (commit record order, chunk files, shapes, crc32 per leaf)
    and every shard file's index. What a killed writer left for the next one to clear is appended
    to ``notes`` if given (it is not a problem)."""
    notes = [] if notes is None else notes
    root = os.path.join(os.fspath(run_dir), ARCHIVE)
    if has_references(run_dir) and not zio.group_exists(root):  # a series read in place
        return verify_references(run_dir)
    if not zio.group_exists(root):
        return [f"'{run_dir}' has no checkpoint archive ({ARCHIVE}); {remedy('written_run')}"]
    problems: list[str] = []
    try:
        group = zio.open_group(root, "r")
        layout = zio.attrs(group)["leaves"]
        step_arr, sum_arr = zio.get_array(group, "step"), zio.get_array(group, "checksum")
        arrays = zio.list_arrays(group, "leaves")
    except Exception as e:
        return [f"{root} has unreadable metadata ({_err(e)}); {_RESTORE}"]
    if step_arr is None or sum_arr is None:
        return [f"{root} lacks its step or checksum array; {_RESTORE}"]
    for path in files.stale_temp_files(root):
        notes.append(f"{path} is a temporary file left by a killed writer; {remedy('next_archive_writer')} "
                     "removes it (or delete it)")
    named = {"step": step_arr, "checksum": sum_arr, **{name: arrays[key] for name, _, _, key in layout
                                                       if key in arrays}}
    raw = _read_1d(step_arr, step_arr.shape[0], "commit record 'step'", problems)
    if raw is None:
        _shard_problems(root, named, None, problems, notes)
        return problems
    free = np.flatnonzero(raw == -1)
    n = int(free[0]) if free.size else raw.size
    steps = raw[:n]
    _shard_problems(root, named, steps, problems, notes)
    for i in np.flatnonzero(raw[n:] != -1) + n:
        problems.append(f"checkpoint at step {raw[i]} (slot {i}) is committed after an uncommitted slot {n}; "
                        f"{_RESTORE}")
    for i in np.flatnonzero(np.diff(steps) <= 0) + 1:
        problems.append(f"checkpoint at step {steps[i]} (slot {i}) is not after step {steps[i - 1]}; the "
                        f"commit record 'step' is out of order; {_RESTORE}")
    order = zio.attrs(sum_arr).get("leaf_order", [entry[0] for entry in layout])
    leaves = []
    for name, shape, dtype, key in layout:
        arr = arrays.get(key)
        if arr is None:
            problems.append(f"array '{name}' is missing from {ARCHIVE}; {_RESTORE}")
        elif tuple(arr.shape[1:]) != tuple(shape) or arr.shape[0] < n or np.dtype(arr.dtype) != np.dtype(dtype):
            problems.append(f"array '{name}' has shape {tuple(arr.shape)} {arr.dtype}, expected "
                            f"({n}+, {', '.join(map(str, shape))}) {dtype}; {_RESTORE}")
        else:
            leaves.append((order.index(name), name, arr))
    for slot, step in enumerate(steps.tolist()):
        try:
            stored = np.asarray(sum_arr[slot], dtype=np.uint32)
        except Exception as e:
            problems.append(f"checkpoint at step {step}: its checksum record is unreadable ({_err(e)}); {_RESTORE}")
            stored = None
        values = zio.read_many([(arr, slot) for _, _, arr in leaves], return_exceptions=True, missing_ok=False)
        for (col, name, arr), value in zip(leaves, values):
            path = zio.slot_file(root, arr, slot)
            if not os.path.isfile(path):
                problems.append(f"checkpoint at step {step}: chunk of array '{name}' is missing ({path}); {_RESTORE}")
            elif isinstance(value, BaseException):
                problems.append(f"checkpoint at step {step}: array '{name}' is unreadable ({_err(value)}); {_RESTORE}")
            elif stored is not None and int(stored[col]) != leaf_crc32(value):
                problems.append(f"checkpoint at step {step}: array '{name}' fails its checksum (stored "
                                f"{int(stored[col]):08x}, read {leaf_crc32(value):08x}); {_RESTORE}")
    return problems


def verify_scalars(run_dir: str | os.PathLike[str], notes: list[str] | None = None) -> list[str]:
    """Check ``scalars.zarr``: step axis, one mask per variable, and every computed cell readable.
    Temporary files and staged copies a killed compute left go to ``notes`` (they are not problems:
    the next compute removes or finishes them)."""
    root = os.path.join(os.fspath(run_dir), SCALARS)
    if not zio.group_exists(root):
        return []
    notes = [] if notes is None else notes
    for path in files.stale_temp_files(root):
        notes.append(f"{path} is a temporary file left by a killed writer; {remedy('next_scalars_writer')} removes it")
    fix = f"mark it uncomputed with store.clear_cells and {remedy('compute_rerun')}"
    problems: list[str] = []
    try:
        group = zio.open_group(root, "r")
        arrays = zio.list_arrays(group)
        raw_steps = np.asarray(arrays[STEP][:], dtype=np.int64)
    except StoreError as e:  # names the damaged file itself
        return [str(e)]
    except Exception as e:
        return [f"{root} has unreadable metadata or step axis ({_err(e)}); {remedy('compute_again')}"]
    n = raw_steps.size
    if np.any(raw_steps == -1) or np.any(np.diff(raw_steps) <= 0):
        problems.append(f"the step axis of {root} is not strictly increasing or has unfilled entries; "
                        f"{remedy('compute_rerun')} to finish growing it, or delete it and recompute")
    for name, arr in sorted(arrays.items()):
        if name == STEP or internal_array(name) or zio.dimension_names(arr)[:1] != (STEP,):
            continue
        mask = arrays.get(mask_name(name))
        if mask is None:
            problems.append(f"scalar '{name}' has no computed mask; {remedy('compute_rerun')} to recreate it")
            continue
        if arr.shape[0] != n or mask.shape[0] != n:
            problems.append(f"scalar '{name}' has {arr.shape[0]} steps (mask {mask.shape[0]}), the step axis "
                            f"{n}; {remedy('compute_rerun')} to finish growing the store")
            continue
        flags = zio.read_many([(mask, i) for i in range(n)], return_exceptions=True)
        computed = []
        for i, flag in enumerate(flags):
            if isinstance(flag, BaseException):
                problems.append(f"scalar '{name}' at step {raw_steps[i]}: mask chunk is unreadable "
                                f"({_err(flag)}); {fix}")
            elif int(np.asarray(flag)) not in (0, 1):
                problems.append(f"scalar '{name}' at step {raw_steps[i]}: mask value {int(np.asarray(flag))} "
                                f"is not 0 or 1 (corrupted chunk); {fix}")
            elif int(np.asarray(flag)) == 1:
                computed.append(i)
        values = zio.read_many([(arr, i) for i in computed], return_exceptions=True)
        for i, value in zip(computed, values):
            path = zio.chunk_file(root, arr, (i, *(0 for _ in arr.shape[1:])))
            if not os.path.isfile(path):
                problems.append(f"scalar '{name}' at step {raw_steps[i]}: the mask says computed but the value "
                                f"chunk is missing ({path}); "
                                f"{remedy('recompute_missing_cell', run=str(run_dir), name=name)}")
            elif isinstance(value, BaseException):
                problems.append(f"scalar '{name}' at step {raw_steps[i]}: value chunk is unreadable "
                                f"({_err(value)}); {remedy('recompute_damaged_cell', run=str(run_dir), name=name, step=int(raw_steps[i]))}")
    return problems
