"""Where a checkpoint's bytes live on disk, for tests that damage stored files on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def slot_region(array_folder: str | Path, slot: int) -> tuple[Path, int, int]:
    """(file, offset, length) of leading-axis ``slot`` of the zarr array in ``array_folder``: its own
    chunk file, or its place in a shard file (read from the shard's index)."""
    folder = Path(array_folder)
    array = zarr.open_array(str(folder), mode="r")
    per_file = (array.shards or array.chunks)[0]
    key = array.metadata.encode_chunk_key((slot // per_file, *(0 for _ in array.shape[1:])))
    path = folder.joinpath(*key.split("/"))
    assert path.is_file(), path
    if not array.shards:
        return path, 0, path.stat().st_size
    index = path.read_bytes()[-(per_file * 16 + 4):-4]
    offset, length = np.frombuffer(index, "<u8").reshape(per_file, 2)[slot % per_file]
    assert offset != 2**64 - 1, f"slot {slot} is not in {path}"
    return path, int(offset), int(length)


def checkpoint_chunk(run: str | Path, leaf_glob: str, slot: int) -> tuple[Path, int, int]:
    """``slot_region`` of checkpoint slot ``slot`` of the first leaf array matching ``leaf_glob``."""
    return slot_region(next((Path(run) / "checkpoints.zarr" / "leaves").glob(leaf_glob)), slot)


def flip_byte(run: str | Path, leaf_glob: str, slot: int, at: int = 10) -> None:
    """Flip byte ``at`` of checkpoint slot ``slot`` of a leaf, in place (bit rot in one checkpoint)."""
    path, offset, length = checkpoint_chunk(run, leaf_glob, slot)
    assert at < length
    with open(path, "r+b") as f:
        f.seek(offset + at)
        byte = f.read(1)[0]
        f.seek(offset + at)
        f.write(bytes([byte ^ 0xFF]))
