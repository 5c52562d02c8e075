"""The only module that imports zarr: open/create groups and arrays, concurrent chunk I/O, paths.

Every array is zarr format 3, unsharded, and every handle given out writes with
``write_empty_chunks=True`` (a runtime setting, not stored), so a chunk file exists for every
written region and a missing file is corruption, not a fill value.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.core.sync import sync
from zarr.storage import LocalStore

__all__ = [
    "Array", "Group", "group_exists", "open_group", "create_array", "get_array", "list_arrays",
    "delete_node", "resize", "read_many", "write_many", "chunk_file", "dimension_names", "attrs",
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
    return zarr.open_group(os.fspath(path), mode=mode, zarr_format=3, use_consolidated=False)


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
    overwrite: bool = False,
) -> zarr.Array:
    """Create an unsharded array; ``compress`` uses zstd with a content checksum (detects bit rot).
    ``flat_chunks`` names chunk files ``c.I.J`` in the array's folder instead of nested folders
    ``c/I/J``: appending a chunk then creates one file and no folders (a folder per chunk cost most
    of a small checkpoint's write time)."""
    compressors = (ZstdCodec(level=3, checksum=True),) if compress else None
    return group.create_array(
        name, shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype), fill_value=fill_value,
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
    return {k: a.with_config(_ARRAY_CONFIG) for k, a in group.arrays()}


def delete_node(group: zarr.Group, name: str) -> None:
    """Delete an array (metadata and all chunks) if it exists."""
    if name in group:
        del group[name]


def resize(array: zarr.Array, shape: Sequence[int]) -> None:
    """Change an array's shape (metadata only when growing)."""
    array.resize(tuple(shape))


def _plain_layout(array: zarr.Array) -> tuple[str, np.dtype, bool] | None:
    """(folder, on-disk dtype, zstd?) for a local array chunked (1, *rest) with codecs bytes[+zstd]."""
    md = array.metadata
    codecs = tuple(getattr(md, "codecs", ()))
    if (getattr(md, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore)
            or not codecs or not isinstance(codecs[0], BytesCodec)
            or not (len(codecs) == 1 or (len(codecs) == 2 and isinstance(codecs[1], ZstdCodec)))
            or array.ndim == 0 or tuple(array.chunks) != (1, *array.shape[1:])):
        return None
    endian = codecs[0].endian
    order = ">" if endian is not None and endian.value == "big" else "<"
    folder = os.path.join(os.fspath(array.store.root), *array.path.split("/"))
    return folder, np.dtype(array.dtype).newbyteorder(order), len(codecs) == 2


def _read_slot(array: zarr.Array, folder: str, disk_dtype: np.dtype, zstd: bool, slot: int,
               missing_ok: bool = True) -> np.ndarray:
    rest = tuple(array.shape[1:])
    key = array.metadata.encode_chunk_key((slot, *(0 for _ in rest)))
    path = os.path.join(folder, *key.split("/"))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if not missing_ok:
            raise
        return np.full(rest, array.fill_value, dtype=array.dtype)
    if zstd:
        raw = Zstd().decode(raw)  # verifies the frame's content checksum
    n = int(np.prod(rest, dtype=np.int64))
    if len(raw) != n * disk_dtype.itemsize:
        raise ValueError(f"chunk file {path} holds {len(raw)} bytes, expected {n * disk_dtype.itemsize}")
    return np.frombuffer(raw, dtype=disk_dtype).reshape(rest).astype(array.dtype, copy=True)


def _read_fast(array: zarr.Array, sel: Any, missing_ok: bool = True) -> np.ndarray | None:
    """Read whole leading-axis slots of a plain array straight from its chunk files, else None."""
    layout = _plain_layout(array)
    if layout is None:
        return None
    n = array.shape[0]
    if isinstance(sel, (int, np.integer)) and 0 <= int(sel) < n:
        return _read_slot(array, *layout, int(sel), missing_ok)
    if isinstance(sel, slice) and sel.step in (None, 1):
        start, stop, _ = sel.indices(n)
        parts = [_read_slot(array, *layout, i, missing_ok) for i in range(start, stop)]
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
    """Write one chunk file (its folders made as needed); an OSError (e.g. ENOSPC) propagates."""
    try:
        f = open(path, "wb")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "wb")
    with f:
        f.write(data)


def write_leading_chunks(root: str | os.PathLike[str], items: Sequence[tuple[zarr.Array, int, np.ndarray]]) -> None:
    """Write ``array[i] = value`` for arrays chunked ``(1, *array.shape[1:])`` in the local store at
    ``root``. Where a chunk is stored as its plain bytes (one little-endian bytes codec, no
    compressor), the chunk file is written directly: the same file zarr writes, without its
    per-chunk asyncio round trips (~1.5 ms a chunk, most of a small model's checkpoint write);
    other arrays go through zarr."""
    through_zarr = []
    for array, index, value in items:
        codecs = array.metadata.codecs
        plain = (len(codecs) == 1 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
                 and tuple(array.chunks) == (1, *array.shape[1:]) and np.shape(value) == tuple(array.shape[1:]))
        if not plain:
            through_zarr.append((array, index, value))
            continue
        dtype = np.dtype(array.dtype).newbyteorder("<")
        path = chunk_file(root, array, (int(index), *(0 for _ in array.shape[1:])))
        write_chunk_file(path, np.ascontiguousarray(value, dtype=dtype).tobytes())
    if through_zarr:
        write_many(through_zarr)


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
