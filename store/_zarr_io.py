"""The only module that imports zarr: open/create groups and arrays, concurrent chunk I/O, paths.

Every array is zarr format 3, unsharded, and every handle given out writes with
``write_empty_chunks=True`` (a runtime setting, not stored), so a chunk file exists for every
written region and a missing file is corruption, not a fill value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.sync import sync
from zarr.storage import LocalStore

from . import _files as files
from . import _shard_files as shard_files

__all__ = [
    "Array", "Group", "group_exists", "open_group", "create_array", "get_array", "list_arrays",
    "delete_node", "rename_node", "resize", "read_many", "write_many", "chunk_file", "slot_file",
    "shard_file_states", "dimension_names", "attrs",
    "ChunkReader", "lazy_array",
]

Array = zarr.Array
Group = zarr.Group

_ARRAY_CONFIG = {"write_empty_chunks": True}


def group_exists(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a zarr group's metadata."""
    return os.path.isfile(os.path.join(path, "zarr.json"))


def open_group(path: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """Open (mode "r"/"r+") or open-or-create (mode "a") a format 3 group, unconsolidated."""
    try:
        return zarr.open_group(os.fspath(path), mode=mode, zarr_format=3, use_consolidated=False)
    except ValueError as exc:  # unparsable metadata: name the file
        raise _metadata_error(path, exc) from None


def _metadata_error(root: str | os.PathLike[str], exc: BaseException | None) -> BaseException | None:
    """A StoreError naming the first unreadable ``zarr.json`` of ``root`` or its direct children
    (else ``exc`` itself)."""
    import json

    from .errors import StoreError

    root = os.fspath(root)
    children = [e.path for e in os.scandir(root) if e.is_dir()] if os.path.isdir(root) else []
    for folder in [root, *sorted(children)]:
        path = os.path.join(folder, "zarr.json")
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    json.load(f)
            except (ValueError, OSError) as bad:
                return StoreError(f"the zarr metadata file {path} is damaged ({type(bad).__name__}); restore it, "
                                  "or delete its folder and recompute what it held")
    return exc


def create_array(
    group: zarr.Group,
    name: str,
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: Any,
    fill_value: Any,
    dimension_names: Sequence[str] | None = None,
    attributes: dict[str, Any] | None = None,
    compress: bool = True,
    flat_chunks: bool = False,
    slots_per_file: int = 1,
    overwrite: bool = False,
) -> zarr.Array:
    """Create an unsharded array; ``compress`` uses zstd with a content checksum (detects bit rot).
    ``flat_chunks`` names chunk files ``c.I.J`` in the array's folder instead of nested folders
    ``c/I/J``: appending a chunk then creates one file and no folders (a folder per chunk cost most
    of a small checkpoint's write time). ``slots_per_file`` > 1 (uncompressed arrays chunked
    ``(1, *rest)`` only) stores that many leading-axis chunks per shard file, written in place by
    ``write_leading_chunks`` (see ``_shard_files``)."""
    compressors = (ZstdCodec(level=3, checksum=True),) if compress else None
    shards = None
    if slots_per_file > 1:
        if compress or tuple(chunks) != (1, *tuple(shape)[1:]):
            raise ValueError("slots_per_file > 1 needs an uncompressed array chunked (1, *rest)")
        shards = (int(slots_per_file), *tuple(shape)[1:])
    return group.create_array(
        name, shape=tuple(shape), chunks=tuple(chunks), shards=shards, dtype=np.dtype(dtype), fill_value=fill_value,
        compressors=compressors, dimension_names=None if dimension_names is None else list(dimension_names),
        attributes=attributes or {}, config=_ARRAY_CONFIG, overwrite=overwrite,
        chunk_key_encoding={"name": "default", "separator": "." if flat_chunks else "/"},
    )


def get_array(group: zarr.Group, name: str) -> zarr.Array | None:
    """Open the array at ``name`` under ``group`` with fresh metadata, or None if absent."""
    try:
        node = group[name]
    except KeyError:
        return None
    return node.with_config(_ARRAY_CONFIG) if isinstance(node, zarr.Array) else None


def list_arrays(group: zarr.Group, under: str = "") -> dict[str, zarr.Array]:
    """All arrays directly in ``group`` (or its subgroup ``under``), by key."""
    if under:
        if under not in group:
            return {}
        group = group[under]
    folder = os.path.join(os.fspath(group.store.root), *group.path.split("/")) if group.path else \
        os.fspath(group.store.root)
    bad = _metadata_error(folder, None)  # before zarr reads them concurrently (its pending reads would be
    if bad is not None:                  # abandoned noisily at exit)
        raise bad
    return {k: a.with_config(_ARRAY_CONFIG) for k, a in group.arrays()}


def delete_node(group: zarr.Group, name: str) -> None:
    """Delete an array (metadata and all chunks) if it exists."""
    if name in group:
        del group[name]


def rename_node(root: str | os.PathLike[str], old: str, new: str) -> None:
    """Rename array ``old`` of the local group at ``root`` to ``new`` (one directory rename; zarr v3
    metadata does not record a node's own name). ``new`` must not exist."""
    src, dst = os.path.join(os.fspath(root), old), os.path.join(os.fspath(root), new)
    if os.path.exists(dst):
        raise FileExistsError(f"cannot rename '{old}' to '{new}' in {root}: '{new}' exists")
    os.rename(src, dst)
    files.fsync_dir(root)


def resize(array: zarr.Array, shape: Sequence[int]) -> None:
    """Change an array's shape (metadata only when growing)."""
    array.resize(tuple(shape))


@dataclasses.dataclass(frozen=True)
class _SlotLayout:
    """How leading-axis slot i of a local array chunked ``(1, *rest)`` is stored: in its own chunk
    file (``per_file == 1``) or as slot ``i % per_file`` of shard file ``i // per_file`` (see
    ``slot_file``)."""

    disk_dtype: np.dtype
    zstd: bool
    per_file: int
    index_crc: bool


def _bytes_order(codec: BytesCodec) -> str:
    return ">" if codec.endian is not None and codec.endian.value == "big" else "<"


def _slot_layout(array: zarr.Array) -> _SlotLayout | None:
    """The slot layout of a local format-3 array chunked (1, *rest) with codecs bytes[+zstd], or
    sharded along the leading axis with inner codecs bytes; None for anything else."""
    md = array.metadata
    codecs = tuple(getattr(md, "codecs", ()))
    if (getattr(md, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore) or not codecs
            or array.ndim == 0 or tuple(array.chunks) != (1, *array.shape[1:])):
        return None
    dtype = np.dtype(array.dtype)
    if isinstance(codecs[0], ShardingCodec):
        shard = codecs[0]
        index = tuple(shard.index_codecs)
        shard_shape = tuple(md.chunk_grid.chunk_shape)
        if (len(codecs) != 1 or len(shard.codecs) != 1 or not isinstance(shard.codecs[0], BytesCodec)
                or shard.index_location != ShardingCodecIndexLocation.end
                or not index or not isinstance(index[0], BytesCodec) or _bytes_order(index[0]) != "<"
                or not (len(index) == 1 or (len(index) == 2 and isinstance(index[1], Crc32cCodec)))
                or shard_shape[1:] != tuple(array.shape[1:])):
            return None
        return _SlotLayout(dtype.newbyteorder(_bytes_order(shard.codecs[0])), False, shard_shape[0],
                           len(index) == 2)
    if not isinstance(codecs[0], BytesCodec) or not (
            len(codecs) == 1 or (len(codecs) == 2 and isinstance(codecs[1], ZstdCodec))):
        return None
    return _SlotLayout(dtype.newbyteorder(_bytes_order(codecs[0])), len(codecs) == 2, 1, False)


def _decode(array: zarr.Array, layout: _SlotLayout, raw: bytes, path: str) -> np.ndarray:
    rest = tuple(array.shape[1:])
    if layout.zstd:
        raw = Zstd().decode(raw)  # verifies the frame's content checksum
    n = int(np.prod(rest, dtype=np.int64))
    if len(raw) != n * layout.disk_dtype.itemsize:
        raise ValueError(f"chunk file {path} holds {len(raw)} bytes, expected {n * layout.disk_dtype.itemsize}")
    return np.frombuffer(raw, dtype=layout.disk_dtype).reshape(rest).astype(array.dtype, copy=True)


def _read_slots(array: zarr.Array, layout: _SlotLayout, slots: Sequence[int], missing_ok: bool) -> list[np.ndarray]:
    """Slots read straight from their chunk or shard files (a shard's index is read once per call)."""
    rest = tuple(array.shape[1:])

    def missing(path: str, what: str) -> np.ndarray:
        if not missing_ok:
            raise FileNotFoundError(errno.ENOENT, what, path)
        return np.full(rest, array.fill_value, dtype=array.dtype)

    out: list[np.ndarray] = []
    if layout.per_file == 1:
        for slot in slots:
            path = slot_file(array.store.root, array, slot)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                out.append(missing(path, "chunk file is missing"))
                continue
            out.append(_decode(array, layout, raw, path))
        return out
    nbytes = int(np.prod(rest, dtype=np.int64)) * layout.disk_dtype.itemsize
    k = layout.per_file
    i = 0
    while i < len(slots):
        j = i
        while j < len(slots) and slots[j] // k == slots[i] // k:
            j += 1
        path = slot_file(array.store.root, array, slots[i])
        try:
            raws = shard_files.read_slots(path, k, layout.index_crc, [s % k for s in slots[i:j]], nbytes)
        except FileNotFoundError:
            raws = [None] * (j - i)
        out.extend(missing(path, f"shard file is missing or lacks slot {s}") if raw is None
                   else _decode(array, layout, raw, path) for s, raw in zip(slots[i:j], raws))
        i = j
    return out


def _read_fast(array: zarr.Array, sel: Any, missing_ok: bool = True) -> np.ndarray | None:
    """Read whole leading-axis slots of a plain array straight from its chunk or shard files, else None."""
    layout = _slot_layout(array)
    if layout is None:
        return None
    n = array.shape[0]
    if isinstance(sel, (int, np.integer)) and 0 <= int(sel) < n:
        return _read_slots(array, layout, [int(sel)], missing_ok)[0]
    if isinstance(sel, slice) and sel.step in (None, 1):
        start, stop, _ = sel.indices(n)
        parts = _read_slots(array, layout, list(range(start, stop)), missing_ok)
        return np.stack(parts) if parts else np.zeros((0, *array.shape[1:]), array.dtype)
    return None


class ChunkReader:
    """Read-only array-like over a zarr array for dask: whole-slot reads bypass the codec pipeline."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        whole_rest = len(key) == self.ndim and all(
            isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(key[1:], self.shape[1:]))
        if whole_rest and self.ndim:
            value = _read_fast(self.array, key[0])
            if value is not None:
                return value
        return np.asarray(self.array[key])


def lazy_array(array: zarr.Array, chunks: Sequence[int], name: str) -> Any:
    """A dask array over ``array`` with the given dask chunks (reads nothing now)."""
    import dask.array as da

    return da.from_array(ChunkReader(array), chunks=tuple(chunks), name=name, lock=False, asarray=False,
                         fancy=False, inline_array=True, meta=np.empty((0,) * array.ndim, np.dtype(array.dtype)))


def read_many(items: Sequence[tuple[zarr.Array, Any]], *, return_exceptions: bool = False,
              missing_ok: bool = True) -> list[Any]:
    """Read ``array[selection]`` for every pair; whole-slot reads of plain arrays skip the pipeline.

    zarr's codec pipeline costs 0.15-0.3 ms per chunk here; a chunk file of an array with codecs
    ``bytes`` (+ ``zstd``) is its raw bytes (zstd-framed), so whole-slot reads decode it directly.
    With ``return_exceptions`` a failed read yields its exception instead of raising; with
    ``missing_ok=False`` a missing chunk file of a plain array raises FileNotFoundError.
    """
    out: list[Any] = [None] * len(items)
    pending = []
    for i, (a, sel) in enumerate(items):
        try:
            value = _read_fast(a, sel, missing_ok)
        except Exception as e:
            if not return_exceptions:
                raise
            value = e
        if value is None:
            pending.append(i)
        else:
            out[i] = value

    async def run() -> list[Any]:
        return await asyncio.gather(*(items[i][0].async_array.getitem(items[i][1]) for i in pending),
                                    return_exceptions=return_exceptions)
    if pending:
        for i, value in zip(pending, sync(run())):
            out[i] = value if isinstance(value, BaseException) else np.asarray(value)
    return out


def write_many(items: Sequence[tuple[zarr.Array, Any, np.ndarray]]) -> None:
    """Write ``array[selection] = value`` for every triple concurrently; returns when all are done."""
    async def run() -> None:
        await asyncio.gather(*(a.async_array.setitem(sel, v) for a, sel, v in items))
    sync(run())


def write_chunk_file(path: str, data: bytes) -> None:
    """Write one whole chunk file (its folders made as needed) under a temporary name and rename it
    into place: a killed process leaves the old file or the new one, never a cut one (plus at most a
    temporary file the next writer removes). Not fsynced: a slot's bytes in a shard file are not
    either, and one fsync per leaf per checkpoint would dominate a dense schedule's saves. Plain
    descriptor calls: a buffered file object costs a third more here. An OSError (ENOSPC) propagates."""
    files.atomic_write_fd(path, lambda fd: files.write_all(fd, data, 0), durable=False)


def write_leading_chunks(root: str | os.PathLike[str], items: Sequence[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``array[i] = value`` for arrays chunked ``(1, *array.shape[1:])`` in the local store at
    ``root``. Where a slot is stored as its plain little-endian bytes, in its own chunk file or in a
    shard (see ``_shard_files``), the file is written directly: the same bytes zarr writes, without
    its per-chunk asyncio round trips (~1.5 ms a chunk, most of a small model's checkpoint write);
    other arrays go through zarr."""
    through_zarr = []
    for array, index, value in items:
        layout = _slot_layout(array)
        plain = (layout is not None and not layout.zstd and layout.disk_dtype.byteorder in ("<", "=", "|")
                 and np.shape(value) == tuple(array.shape[1:]) and 0 <= int(index) < array.shape[0])
        if not plain:
            through_zarr.append((array, index, value))
            continue
        data = np.ascontiguousarray(value, dtype=layout.disk_dtype).tobytes()
        path = slot_file(root, array, int(index))
        if layout.per_file == 1:
            write_chunk_file(path, data)
        elif not shard_files.write_slot(path, layout.per_file, layout.index_crc, int(index) % layout.per_file, data):
            through_zarr.append((array, index, value))  # a shard not in the fixed layout: zarr rewrites it
    if through_zarr:
        write_many(through_zarr)


def slot_file(root: str | os.PathLike[str], array: zarr.Array, slot: int) -> str:
    """Filesystem path of the chunk or shard file that holds leading-axis ``slot`` of ``array``."""
    shard = tuple(getattr(array, "shards", None) or array.chunks)
    return chunk_file(root, array, (int(slot) // shard[0], *(0 for _ in array.shape[1:])))


def shard_file_states(root: str | os.PathLike[str], array: zarr.Array) -> list[tuple[str, range, str, str]]:
    """``(path, slots, state, detail)`` of every shard file present of an array stored in the slot
    layout with more than one slot per file (empty for any other array); state and detail as
    ``_shard_files.check_index`` gives them, slots the leading-axis slots the file holds."""
    layout = _slot_layout(array)
    if layout is None or layout.per_file == 1:
        return []
    k = layout.per_file
    nbytes = int(np.prod(array.shape[1:], dtype=np.int64)) * layout.disk_dtype.itemsize
    out = []
    for first in range(0, int(array.shape[0]), k):
        path = slot_file(root, array, first)
        if os.path.exists(path):
            out.append((path, range(first, first + k), *shard_files.check_index(path, k, layout.index_crc, nbytes)))
    return out


def chunk_file(root: str | os.PathLike[str], array: zarr.Array, coords: Sequence[int]) -> str:
    """Filesystem path of the chunk with grid ``coords`` of ``array`` in the store at ``root``."""
    key = array.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    return os.path.join(os.fspath(root), *array.path.split("/"), *key.split("/"))


def dimension_names(array: zarr.Array) -> tuple[str, ...]:
    """The array's dimension names (empty strings where unnamed)."""
    names = array.metadata.dimension_names or ()
    return tuple(n or "" for n in names)


def attrs(array: zarr.Array | zarr.Group) -> dict[str, Any]:
    """A plain-dict copy of the node's attributes."""
    return dict(array.attrs.asdict())
