"""Raw I/O of zarr v3 shard files that hold K leading-axis slots of an array, one slot per inner chunk.

A shard file written here has a fixed layout: slot j's bytes at offset ``j * nbytes`` (uncompressed,
little-endian), then the shard index at offset ``K * nbytes``: K (offset, nbytes) uint64 pairs, an
empty slot being (2**64-1, 2**64-1), and the index's crc32c (zarr's sharding codec with
``index_location="end"``). The file is created once, at its full size, when its first slot is
written; later slots are written in place (no file or folder creation per slot, which cost most of
a small checkpoint's save). Any shard zarr can read is read, whatever its layout.
"""

from __future__ import annotations

import os
import time

import google_crc32c
import numpy as np

from . import _files as files

__all__ = ["EMPTY", "index_nbytes", "read_slots", "write_slot"]

EMPTY = np.uint64(2**64 - 1)
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def index_nbytes(per_file: int, crc: bool) -> int:
    """Size of a shard index of ``per_file`` slots."""
    return per_file * 16 + (4 if crc else 0)


def _crc(entries: np.ndarray) -> bytes:
    return np.uint32(google_crc32c.value(entries.tobytes())).astype("<u4").tobytes()


def _read_index(fd: int, path: str, per_file: int, crc: bool) -> np.ndarray:
    size = os.fstat(fd).st_size
    n_index = index_nbytes(per_file, crc)
    if size < n_index:
        raise ValueError(f"shard file {path} holds {size} bytes, less than its {n_index}-byte index")
    raw = os.pread(fd, n_index, size - n_index)
    entries = np.frombuffer(raw[:per_file * 16], dtype="<u8").reshape(per_file, 2)
    if crc and raw[per_file * 16:] != _crc(entries):
        raise ValueError(f"shard file {path} has a damaged index (crc32c mismatch)")
    return entries


def read_slots(path: str, per_file: int, crc: bool, slots: list[int], nbytes: int) -> list[bytes | None]:
    """The bytes of each slot (index within the file) of the shard at ``path``; None where a slot is
    empty. A missing file raises FileNotFoundError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        for attempt in range(3):
            try:
                entries = _read_index(fd, path, per_file, crc)
                break
            except ValueError:
                if attempt == 2:
                    raise
                time.sleep(0.01)  # a read racing the writer's index update sees a torn index once
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


def write_slot(path: str, per_file: int, crc: bool, slot: int, data: bytes) -> bool:
    """Write ``data`` as slot ``slot`` of the shard at ``path`` (created at full size if absent), then
    its index entry. Returns False, writing nothing, if an existing file is not in this fixed layout
    (e.g. rewritten by zarr): the caller then writes through zarr. OSErrors (ENOSPC) propagate."""
    nbytes = len(data)
    data_end = per_file * nbytes
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        created = False
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, _CREATE, 0o666)
        created = True
    try:
        if created:
            os.ftruncate(fd, data_end + index_nbytes(per_file, crc))
            entries = np.full((per_file, 2), EMPTY, dtype="<u8")
            first = 0  # the whole index is written below
        else:
            if os.fstat(fd).st_size != data_end + index_nbytes(per_file, crc):
                return False
            try:
                entries = _read_index(fd, path, per_file, crc).copy()
            except ValueError:
                return False
            ours = np.arange(per_file, dtype=np.uint64) * np.uint64(nbytes)
            empty = (entries[:, 0] == EMPTY) & (entries[:, 1] == EMPTY)
            if not np.all(empty | ((entries[:, 0] == ours) & (entries[:, 1] == nbytes))):
                return False
            first = slot
        files.write_all(fd, data, slot * nbytes)
        entries[slot] = (slot * nbytes, nbytes)
        # one write from this slot's entry to the end (crc included): a killed process leaves the old
        # index or the new one, never a mix
        tail = entries[first:].tobytes() + (_crc(entries) if crc else b"")
        files.write_all(fd, tail, data_end + first * 16)
        return True
    except BaseException:
        if created:  # a half-made shard would read as damaged; without it the slots read as absent
            os.close(fd)
            fd = -1
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)

