"""Checkpoint archive ``RUN_DIR/checkpoints.zarr``: one array per leaf, one chunk per checkpoint.

Layout: ``leaves/<key>`` (capacity, *leaf_shape) uncompressed, chunk (1, *leaf_shape);
``checksum`` (capacity, n_leaves) uint32 crc32 per leaf in sorted-name order; ``step``
(capacity,) int64, fill -1, chunk 1: the commit record, written last. Committed checkpoints are
the prefix of ``step`` entries != -1; a crash before the ``step`` write leaves the slot free.

Files: every array keeps one checkpoint per chunk, and small ones group up to 64 consecutive
chunks in a zarr shard file (``c.<slot // K>.0...``, at most 1 MiB), created once at full size and
written in place. Creating a file per leaf per checkpoint cost more than the rest of training on a
small model's dense schedule (benchmarks/RESULTS.md). Archives written before, a file per chunk in
nested folders, still read and grow as they are. Every file is created whole under a temporary name
and renamed into place (``_files.atomic_write_fd``); a writer opening the archive first deletes the
temporary files a killed writer left.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import _files as files
from . import _zarr_io as zio
from ._described import DescribedCheckpoints
from ._schema import nearest_steps
from ._names import check_name, safe_key
from .errors import StoreError
from .references import ReferencedArchive, has_references
from .remedies import remedy

__all__ = ["ARCHIVE", "ArchiveWriter", "ArchiveReader", "open_archive", "read_verified_block", "leaf_crc32"]

ARCHIVE = "checkpoints.zarr"
LeafSpecs = dict[str, tuple[tuple[int, ...], str]]
_INITIAL_CAPACITY = 16
_MAX_SLOTS_PER_FILE = 64
_MAX_SHARD_BYTES = 1 << 20


def slots_per_file(shape: Sequence[int], dtype: Any) -> int:
    """Checkpoints per shard file for a leaf: the largest power of two <= 64 whose shard stays
    within 1 MiB (1 for big leaves: their own file per checkpoint)."""
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    k = 1
    while k * 2 <= _MAX_SLOTS_PER_FILE and k * 2 * nbytes <= _MAX_SHARD_BYTES:
        k *= 2
    return k


def leaf_crc32(value: np.ndarray) -> int:
    """crc32 of an array's C-order bytes."""
    return zlib.crc32(np.ascontiguousarray(value).reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def _norm_specs(specs: Mapping[str, tuple[Sequence[int], Any]]) -> LeafSpecs:
    out: LeafSpecs = {}
    for name in sorted(specs):
        shape, dtype = specs[name]
        out[check_name(name, "leaf")] = (tuple(int(s) for s in shape), np.dtype(dtype).name)
    if not out:
        raise StoreError("a checkpoint needs at least one leaf array; got none")
    return out


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _committed_prefix(steps: np.ndarray) -> int:
    free = np.flatnonzero(steps == -1)
    return int(free[0]) if free.size else int(steps.size)


def _nearest(steps: np.ndarray, step: int) -> str:
    if steps.size == 0:
        return "the archive has no committed checkpoints"
    return "nearest committed steps: " + ", ".join(str(s) for s in nearest_steps(steps, step))


class _Archive(DescribedCheckpoints):
    """Shared open-and-describe logic of the writer and the reader."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = os.fspath(run_dir)
        self.root = os.path.join(self.run_dir, ARCHIVE)

    def _load_layout(self, mode: str) -> None:
        self._group = zio.open_group(self.root, mode)
        info = zio.attrs(self._group)
        if info.get("kind") != "checkpoint_archive":
            raise StoreError(f"'{self.root}' is not a checkpoint archive; {remedy('written_run')}")
        self._specs: LeafSpecs = {n: (tuple(s), d) for n, s, d, _ in info["leaves"]}
        self._keys = {n: k for n, _, _, k in info["leaves"]}
        self._open_arrays()

    def _open_arrays(self) -> None:
        arrays = zio.list_arrays(self._group, "leaves")
        missing = [n for n, k in self._keys.items() if k not in arrays]
        if missing:
            raise StoreError(f"'{self.root}' lacks the array of leaf '{missing[0]}'; "
                             f"{remedy('verify', run=str(self.run_dir))} and restore the archive")
        self._leaves = {n: arrays[k] for n, k in self._keys.items()}
        self._step_arr = zio.get_array(self._group, "step")
        self._sum_arr = zio.get_array(self._group, "checksum")
        if self._step_arr is None or self._sum_arr is None:
            raise StoreError(f"'{self.root}' lacks its step or checksum array; {remedy('verify', run=str(self.run_dir))}")

    def _read_steps(self) -> np.ndarray:
        (raw,) = zio.read_many([(self._step_arr, slice(None))])
        raw = np.asarray(raw, dtype=np.int64)
        self._raw_steps = raw
        return raw[: _committed_prefix(raw)]


class ArchiveWriter(_Archive):
    """Appends checkpoints to ``RUN_DIR/checkpoints.zarr`` (created on first use); one writer at a time."""

    def __init__(self, run_dir: str | os.PathLike[str], leaf_specs: Mapping[str, tuple[Sequence[int], Any]]
                 | None = None, *, capacity: int = _INITIAL_CAPACITY) -> None:
        super().__init__(run_dir)
        self._capacity_hint = max(1, int(capacity))
        self._steps = np.zeros(0, np.int64)
        specs = None if leaf_specs is None else _norm_specs(leaf_specs)
        if os.path.isdir(self.root):
            files.remove_stale_temps(self.root)  # left by a killed writer (one writer at a time)
        if zio.group_exists(self.root) and "kind" in zio.attrs(zio.open_group(self.root, "r")):
            self._load_layout("r+")
            if specs is not None and specs != self._specs:
                raise StoreError(self._spec_mismatch(specs))
            self._steps = self._read_steps()
            self._uncommit_stale()
        elif specs is not None:  # (re)create; a creation cut short left no "kind" attr
            self._create(specs)

    def _spec_mismatch(self, specs: LeafSpecs) -> str:
        extra = sorted(set(specs) - set(self._specs))
        missing = sorted(set(self._specs) - set(specs))
        if extra or missing:
            return (f"'{self.root}' stores leaves that differ from the given ones (unknown: {extra}, "
                    f"missing: {missing}); write this model to a new run directory")
        name = next(n for n in specs if specs[n] != self._specs[n])
        return (f"leaf '{name}' is stored with shape {_fmt(self._specs[name][0])} {self._specs[name][1]}, "
                f"got {_fmt(specs[name][0])} {specs[name][1]}; write this model to a new run directory")

    def _create(self, specs: LeafSpecs) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        cap = self._capacity_hint
        group = zio.open_group(self.root, "a")
        keys = {n: safe_key(n) for n in specs}
        leaves = group.require_group("leaves")
        for name, (shape, dtype) in specs.items():
            zio.create_array(leaves, keys[name], shape=(cap, *shape), chunks=(1, *(max(1, s) for s in shape)),
                             dtype=dtype, fill_value=0, attributes={"leaf_name": name}, compress=False,
                             flat_chunks=True, slots_per_file=slots_per_file(shape, dtype), overwrite=True)
        zio.create_array(group, "checksum", shape=(cap, len(specs)), chunks=(1, len(specs)), dtype="uint32",
                         fill_value=0, attributes={"algorithm": "crc32", "leaf_order": list(specs)},
                         compress=False, flat_chunks=True, slots_per_file=slots_per_file((len(specs),), "uint32"),
                         overwrite=True)
        zio.create_array(group, "step", shape=(cap,), chunks=(1,), dtype="int64", fill_value=-1,
                         compress=False, flat_chunks=True, slots_per_file=_MAX_SLOTS_PER_FILE, overwrite=True)
        # the layout attrs are written last: an archive without them is not an archive yet
        group.attrs.update({"kind": "checkpoint_archive",
                            "leaves": [[n, list(s), d, keys[n]] for n, (s, d) in specs.items()]})
        self._load_layout("r+")

    @property
    def capacity(self) -> int:
        """Allocated checkpoint slots (grows geometrically)."""
        return int(self._step_arr.shape[0])

    def _uncommit_stale(self) -> None:
        n = self._steps.size
        stale = np.flatnonzero(self._raw_steps[n:] != -1) + n
        for i in stale[::-1]:
            self._set_step(int(i), -1)

    def _grow(self, need: int) -> None:
        cap = max(2 * self.capacity, need)
        for arr in self._leaves.values():
            zio.resize(arr, (cap, *arr.shape[1:]))
        zio.resize(self._sum_arr, (cap, self._sum_arr.shape[1]))
        zio.resize(self._step_arr, (cap,))  # the commit record grows last

    def _validate(self, step: int, leaves: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self._steps.size and step <= self._steps[-1]:
            raise StoreError(f"checkpoint step {step} is not after the last committed step {self._steps[-1]} "
                             f"in '{self.root}'; steps must be strictly increasing (truncate_after to rewrite)")
        extra = sorted(set(leaves) - set(self._specs))
        missing = sorted(set(self._specs) - set(leaves))
        if extra or missing:
            raise StoreError(f"checkpoint at step {step} has leaves that differ from the archive's "
                             f"(unknown: {extra}, missing: {missing}); pass exactly the archived leaves")
        out = {}
        for name, (shape, dtype) in self._specs.items():
            value = np.asarray(leaves[name])
            if value.shape != shape:
                raise StoreError(f"leaf '{name}' at step {step} has shape {_fmt(value.shape)}, the archive "
                                 f"stores {_fmt(shape)}; pass arrays of the archived model")
            if value.dtype != np.dtype(dtype):
                raise StoreError(f"leaf '{name}' at step {step} has dtype {value.dtype}, the archive stores "
                                 f"{dtype}; cast it before writing")
            out[name] = value
        return out

    def write_checkpoint(self, step: int, leaves: Mapping[str, Any]) -> None:
        """Write all leaves at the next free slot, then their checksums, then commit ``step``."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise StoreError(f"checkpoint step {step!r} must be a non-negative integer")
        step = int(step)
        if not hasattr(self, "_group"):
            self._create(_norm_specs({n: (np.shape(v), np.asarray(v).dtype) for n, v in leaves.items()}))
        values = self._validate(step, leaves)
        slot = int(self._steps.size)
        if slot >= self.capacity:
            self._grow(slot + 1)
        crcs = np.array([leaf_crc32(values[n]) for n in self._specs], dtype=np.uint32)
        try:
            zio.write_leading_chunks(self.root, [(self._leaves[n], slot, v) for n, v in values.items()])
            zio.write_leading_chunks(self.root, [(self._sum_arr, slot, crcs)])
        except ValueError as e:  # a damaged shard file (its index fails its crc32c)
            raise StoreError(f"checkpoint at step {step} cannot be written to '{self.root}': {e}; "
                             f"{remedy('verify', run=str(self.run_dir))} to see which checkpoints it holds") from None
        self._commit(slot, step)
        self._steps = np.append(self._steps, np.int64(step))

    def _set_step(self, slot: int, step: int) -> None:
        zio.write_leading_chunks(self.root, [(self._step_arr, slot, np.int64(step))])

    def _commit(self, slot: int, step: int) -> None:
        self._set_step(slot, step)

    def truncate_after(self, step: int) -> int:
        """Uncommit every checkpoint with step > ``step`` (last first); returns how many were dropped."""
        keep = int(np.searchsorted(self._steps, int(step), side="right"))
        dropped = int(self._steps.size) - keep
        for slot in range(int(self._steps.size) - 1, keep - 1, -1):
            self._set_step(slot, -1)
        self._steps = self._steps[:keep].copy()
        return dropped

    def close(self) -> None:
        """Nothing is buffered; kept for symmetry with other writers."""

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArchiveReader(_Archive):
    """Read committed checkpoints; opened arrays are cached, ``refresh()`` sees newer commits."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        super().__init__(run_dir)
        if not zio.group_exists(self.root):
            raise FileNotFoundError(f"'{self.run_dir}' has no checkpoint archive ({ARCHIVE}); {remedy('written_run')}")
        self._load_layout("r")
        self.refresh()

    def refresh(self) -> None:
        """Re-read the commit record (and reopen arrays if they have grown)."""
        fresh = zio.get_array(self._group, "step")
        if fresh is not None:
            self._step_arr = fresh
        self._steps = self._read_steps()
        self._slots = {int(s): i for i, s in enumerate(self._steps)}
        if any(a.shape[0] < self._steps.size for a in self._leaves.values()):
            self._open_arrays()

    def _slot(self, step: int) -> int:
        step = int(step)
        if step not in self._slots:
            self.refresh()
        if step not in self._slots:
            raise KeyError(f"step {step} is not a committed checkpoint in '{self.root}'; "
                           f"{_nearest(self._steps, step)}")
        return self._slots[step]

    def _read(self, items: list[tuple[Any, Any]], steps: Sequence[int]) -> list[np.ndarray]:
        try:
            return zio.read_many(items, missing_ok=False)
        except Exception as e:
            what = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
            detail = f"chunk file {e.filename} is missing" if isinstance(e, FileNotFoundError) else str(e)
            raise StoreError(f"checkpoint at {what} in '{self.root}' is damaged ({detail}); "
                             f"{remedy('verify', run=str(self.run_dir))}") from None

    def load(self, step: int) -> dict[str, np.ndarray]:
        """All leaves of the checkpoint at ``step``."""
        slot = self._slot(step)
        names = list(self._leaves)
        values = self._read([(self._leaves[n], slot) for n in names], [int(step)])
        return dict(zip(names, values))

    def load_block(self, steps: Sequence[int]) -> dict[str, np.ndarray]:
        """Leaves of several checkpoints stacked on a leading axis (contiguous slots read as one slice)."""
        slots = [self._slot(s) for s in steps]
        runs: list[tuple[int, int]] = []
        for s in slots:
            if runs and s == runs[-1][1]:
                runs[-1] = (runs[-1][0], s + 1)
            else:
                runs.append((s, s + 1))
        names = list(self._leaves)
        if not runs:
            return {n: np.zeros((0, *self._specs[n][0]), self._specs[n][1]) for n in names}
        values = self._read([(self._leaves[n], slice(a, b)) for n in names for a, b in runs], [int(s) for s in steps])
        k = len(runs)
        return {n: values[i * k] if k == 1 else np.concatenate(values[i * k:(i + 1) * k])
                for i, n in enumerate(names)}

    def stored_checksums(self, step: int) -> np.ndarray:
        """Stored crc32 per leaf (in ``leaf_names`` order) of the checkpoint at ``step``."""
        return np.asarray(self._sum_arr[self._slot(step)], dtype=np.uint32)

    def intact(self, step: int, leaves: Mapping[str, np.ndarray], i: int) -> bool:
        """True if row ``i`` of a loaded block (``leaves``, as `load_block` returns) matches ``step``'s crc32s."""
        stored = self.stored_checksums(step)
        return all(int(stored[j]) == leaf_crc32(leaves[n][i]) for j, n in enumerate(self._specs))

    def verify_checksum(self, step: int) -> bool:
        """True if every leaf of ``step`` reads back and matches its stored crc32."""
        slot = self._slot(step)
        try:
            values = self.load(step)
            stored = np.asarray(self._sum_arr[slot], dtype=np.uint32)
        except Exception:  # a corrupted chunk fails to decode: that is a failed check
            return False
        return all(int(stored[i]) == leaf_crc32(values[n]) for i, n in enumerate(self._specs))

    def damage(self, step: int) -> str | None:
        """None if checkpoint ``step`` reads back intact, else a sentence saying what to do."""
        if self.verify_checksum(step):
            return None
        return (f"checkpoint {step} fails its checksum (corrupted chunk); {remedy('verify', run=str(self.run_dir))} "
                "and restore or retrain that step")

    def to_xarray(self, *, steps_per_chunk: int = 16) -> xr.Dataset:
        """Lazy (dask) Dataset: one variable per leaf, dims ``(step, <leaf>_dim0, ...)``, committed only."""
        n = int(self._steps.size)
        token = uuid.uuid4().hex[:8]
        data_vars = {}
        for name, arr in self._leaves.items():
            shape = self._specs[name][0]
            lazy = zio.lazy_array(arr, (max(1, min(steps_per_chunk, n)), *shape), name=f"ckpt-{name}-{token}")
            dims = ("step", *(f"{name}_dim{i}" for i in range(len(shape))))
            data_vars[name] = (dims, lazy[:n])
        return xr.Dataset(data_vars, coords={"step": self._steps.copy()}, attrs={"source": self.root})


def open_archive(run_dir: str | os.PathLike[str]) -> ArchiveReader | ReferencedArchive:
    """Open a run's checkpoints for reading: ``RUN_DIR/checkpoints.zarr``, or the files its
    ``checkpoints.ref.json`` references (a series read in place; same interface)."""
    if has_references(run_dir) and not zio.group_exists(os.path.join(os.fspath(run_dir), ARCHIVE)):
        return ReferencedArchive(run_dir)
    return ArchiveReader(run_dir)


def read_verified_block(reader: ArchiveReader | ReferencedArchive, steps: Sequence[int]
                        ) -> tuple[list[int], dict[str, np.ndarray], dict[int, str]]:
    """(steps read intact, their leaves stacked, {failed step: sentence}) for a block of checkpoints.
    The block is read once and checked in memory (crc32 per leaf, or a referenced file's size and
    header); only a damaged block is re-read step by step, so one bad step costs only itself."""
    try:
        leaves = reader.load_block(steps)
        if all(reader.intact(s, leaves, i) for i, s in enumerate(steps)):
            return list(steps), leaves, {}
    except Exception:  # an unreadable chunk somewhere in the block: find it below
        pass
    good, failed = [], {}
    for s in steps:
        try:
            reason = reader.damage(s)
            if reason:
                failed[s] = reason
                continue
        except Exception as exc:  # unreadable chunk: report, go on with the others
            failed[s] = (f"checkpoint {s} cannot be read ({type(exc).__name__}: {exc}); "
                         f"{remedy('verify', run=str(reader.run_dir))}")
            continue
        good.append(s)
    leaves = reader.load_block(good) if good else {}
    return good, leaves, failed
