"""Raw I/O of zarr v3 shard files that hold K leading-axis slots of an array, one slot per inner chunk.

A shard file written here has a fixed layout: slot j's bytes at offset ``j * nbytes`` (uncompressed,
little-endian), then the shard index at offset ``K * nbytes``: K (offset, nbytes) uint64 pairs, an
empty slot being (2**64-1, 2**64-1), and the index's crc32c (zarr's sharding codec with
``index_location="end"``). The file is created once, at its full size, when its first slot is
written; later slots are written in place (no file or folder creation per slot, which cost most of
a small checkpoint's save). Any shard zarr can read is read, whatever its layout.

Crash safety: a new file is built under a temporary name (data, then a valid index with its crc),
fsynced and renamed into place, so a killed writer leaves no file or a valid one; a later slot's
index entry is one write, so a kill leaves the old index or the new one. A file whose index was
never written (size 0, or an all-zero index: what a writer killed while creating it in place left,
before this scheme) never indexed a slot: it reads as empty and the next write replaces it.
"""

from __future__ import annotations

import os
import time

import google_crc32c
import numpy as np

from . import _files as files

__all__ = ["EMPTY", "index_nbytes", "check_index", "read_slots", "write_slot"]

EMPTY = np.uint64(2**64 - 1)


def index_nbytes(per_file: int, crc: bool) -> int:
    """Size of a shard index of ``per_file`` slots."""
    return per_file * 16 + (4 if crc else 0)


def _crc(entries: np.ndarray) -> bytes:
    return np.uint32(google_crc32c.value(entries.tobytes())).astype("<u4").tobytes()


def _read_index(fd: int, path: str, per_file: int, crc: bool) -> np.ndarray | None:
    """The index entries (per_file, 2); None if the index was never written (see the module doc);
    a ValueError names any other damage."""
    size = os.fstat(fd).st_size
    n_index = index_nbytes(per_file, crc)
    if size == 0:
        return None
    if size < n_index:
        raise ValueError(f"shard file {path} holds {size} bytes, less than its {n_index}-byte index")
    raw = os.pread(fd, n_index, size - n_index)
    entries = np.frombuffer(raw[:per_file * 16], dtype="<u8").reshape(per_file, 2)
    if crc and raw[per_file * 16:] != _crc(entries):
        if not any(raw):
            return None
        raise ValueError(f"shard file {path} has a damaged index (crc32c mismatch)")
    return entries


def _index_with_retry(fd: int, path: str, per_file: int, crc: bool) -> np.ndarray | None:
    for attempt in range(3):
        try:
            return _read_index(fd, path, per_file, crc)
        except ValueError:
            if attempt == 2:
                raise
            time.sleep(0.01)  # a read racing the writer's index update sees a torn index once
    raise AssertionError("unreachable")


def check_index(path: str, per_file: int, crc: bool, nbytes: int) -> tuple[str, str]:
    """``(state, detail)`` of the shard file at ``path`` holding slots of ``nbytes`` bytes: state
    "ok", "unwritten" (its index was never written: it holds no slot) or "damaged" (detail says how:
    size, crc32c, or an entry that lies outside the file or has the wrong length)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as e:
        return "damaged", f"cannot be opened ({e.strerror})"
    try:
        try:
            entries = _index_with_retry(fd, path, per_file, crc)
        except ValueError as e:
            return "damaged", str(e).replace(f"shard file {path} ", "")
        if entries is None:
            return "unwritten", "its index was never written (a writer was killed creating it)"
        data_end = os.fstat(fd).st_size - index_nbytes(per_file, crc)
        for j, (offset, length) in enumerate(entries.tolist()):
            if offset == int(EMPTY) and length == int(EMPTY):
                continue
            if length != nbytes or offset + length > data_end:
                return "damaged", (f"has an index entry for slot {j} ({length} bytes at offset {offset}) that "
                                   f"does not fit its {data_end}-byte data region of {nbytes}-byte slots")
        return "ok", ""
    finally:
        os.close(fd)


def read_slots(path: str, per_file: int, crc: bool, slots: list[int], nbytes: int) -> list[bytes | None]:
    """The bytes of each slot (index within the file) of the shard at ``path``; None where a slot is
    empty. A missing file raises FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        entries = _index_with_retry(fd, path, per_file, crc)
        if entries is None:
            return [None] * len(slots)
        out: list[bytes | None] = []
        for j in slots:
            offset, length = (int(x) for x in entries[j])
            if offset == int(EMPTY) and length == int(EMPTY):
                out.append(None)
                continue
            if length != nbytes:
                raise ValueError(f"shard file {path} holds {length} bytes for slot {j}, expected {nbytes}")
            raw = os.pread(fd, length, offset)
            if len(raw) != length:
                raise ValueError(f"shard file {path} ends inside slot {j} ({len(raw)} of {length} bytes)")
            out.append(raw)
        return out
    finally:
        os.close(fd)


def _create(path: str, per_file: int, crc: bool, slot: int, data: bytes) -> None:
    """Build the shard file with ``data`` as its only slot, under a temporary name, and rename it
    into place (replacing a never-written one): a kill leaves no file or this valid one."""
    nbytes = len(data)
    entries = np.full((per_file, 2), EMPTY, dtype="<u8")
    entries[slot] = (slot * nbytes, nbytes)

    def write(fd: int) -> None:
        os.ftruncate(fd, per_file * nbytes + index_nbytes(per_file, crc))
        files.write_all(fd, data, slot * nbytes)
        files.write_all(fd, entries.tobytes() + (_crc(entries) if crc else b""), per_file * nbytes)

    files.atomic_write_fd(path, write)


def write_slot(path: str, per_file: int, crc: bool, slot: int, data: bytes) -> bool:
    """Write ``data`` as slot ``slot`` of the shard at ``path`` (created whole if absent or never
    written), then its index entry. Returns False, writing nothing, if an existing file is not in
    this fixed layout (e.g. rewritten by zarr): the caller then writes through zarr. A file of this
    size whose index fails its crc32c raises a ValueError naming it (its other slots cannot be
    read, so it is left as it is). OSErrors (ENOSPC) propagate."""
    nbytes = len(data)
    data_end = per_file * nbytes
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        _create(path, per_file, crc, slot, data)
        return True
    try:
        size = os.fstat(fd).st_size
        if size not in (0, data_end + index_nbytes(per_file, crc)):
            return False
        entries = _read_index(fd, path, per_file, crc)
        if entries is None:  # left by a writer killed while creating it: it holds no slot
            os.close(fd)
            fd = -1
            _create(path, per_file, crc, slot, data)
            return True
        entries = entries.copy()
        ours = np.arange(per_file, dtype=np.uint64) * np.uint64(nbytes)
        empty = (entries[:, 0] == EMPTY) & (entries[:, 1] == EMPTY)
        if not np.all(empty | ((entries[:, 0] == ours) & (entries[:, 1] == nbytes))):
            return False
        files.write_all(fd, data, slot * nbytes)
        entries[slot] = (slot * nbytes, nbytes)
        # one write from this slot's entry to the end (crc included): a killed process leaves the old
        # index or the new one, never a mix
        tail = entries[slot:].tobytes() + (_crc(entries) if crc else b"")
        files.write_all(fd, tail, data_end + slot * 16)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
