"""Where a checkpoint chunk lives on disk, for tests that damage stored files on purpose."""

from __future__ import annotations

from pathlib import Path

import zarr


def checkpoint_chunk(run: str | Path, leaf_glob: str, slot: int) -> Path:
    """The chunk file holding checkpoint slot ``slot`` of the first leaf array matching ``leaf_glob``."""
    folder = next((Path(run) / "checkpoints.zarr" / "leaves").glob(leaf_glob))
    array = zarr.open_array(str(folder), mode="r")
    key = array.metadata.encode_chunk_key((slot, *(0 for _ in array.shape[1:])))
    path = folder.joinpath(*key.split("/"))
    assert path.is_file(), path
    return path
