"""Resume state: ``RUN_DIR/resume/step_<step:012d>.npz`` (optimizer state, data-stream position, ...).

Each file is written atomically (temp file, fsync, rename) with ``meta`` as JSON inside, so a
crash leaves either the old set of files or the new one; arrays round-trip bit for bit. The
arrays are packed into one byte member ``__data__`` described by a JSON ``__index__`` (name,
dtype, shape, offset): a zip member per array cost most of a small model's save. Files with a
member per array (written by earlier versions) still read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._files import atomic_write
from .errors import StoreError

__all__ = ["RESUME_DIR", "write_resume_state", "read_resume_state", "resume_steps", "prune_resume_states"]

RESUME_DIR = "resume"
_META = "__meta__"
_DTYPES = "__dtypes__"
_INDEX = "__index__"
_DATA = "__data__"
_RESERVED = (_META, _DTYPES, _INDEX, _DATA)
_NAME = re.compile(r"^step_(\d{12})\.npz$")


def _path(run_dir: str | os.PathLike[str], step: int) -> str:
    return os.path.join(run_dir, RESUME_DIR, f"step_{int(step):012d}.npz")


def _json_bytes(obj: Any, what: str) -> np.ndarray:
    try:
        text = json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise StoreError(f"resume {what} is not JSON-serializable ({e}); pass plain numbers, strings, "
                         "lists and dicts") from None
    return np.frombuffer(text.encode(), dtype=np.uint8)


def write_resume_state(run_dir: str | os.PathLike[str], step: int, arrays: Mapping[str, Any],
                       meta: Mapping[str, Any]) -> None:
    """Atomically write named arrays and a JSON ``meta`` dict as the resume state of ``step``."""
    index: list[list[Any]] = []
    parts: list[np.ndarray] = []
    extension_dtypes: dict[str, str] = {}
    offset = 0
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name in _RESERVED:
            raise StoreError(f"resume array name {name!r} must be a non-empty string other than "
                             f"{', '.join(map(repr, _RESERVED))}")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise StoreError(f"resume array '{name}' has dtype object; pass numeric arrays")
        if arr.dtype.isbuiltin == 2:  # an extension type (ml_dtypes' bfloat16): keep bits + name
            extension_dtypes[name] = arr.dtype.name
            arr = arr.view(f"u{arr.dtype.itemsize}")
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)  # (0-d arrays become 1-d here)
        index.append([name, arr.dtype.str, list(arr.shape), offset])
        parts.append(raw)
        offset += raw.size
    payload = {
        _META: _json_bytes(dict(meta), "meta"),
        _DTYPES: _json_bytes(extension_dtypes, "dtypes"),
        _INDEX: _json_bytes(index, "index"),
        _DATA: np.concatenate(parts) if parts else np.zeros(0, np.uint8),
    }
    os.makedirs(os.path.join(run_dir, RESUME_DIR), exist_ok=True)
    atomic_write(_path(run_dir, step), lambda f: np.savez(f, **payload))


def read_resume_state(run_dir: str | os.PathLike[str], step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read the arrays and meta dict written by ``write_resume_state`` for ``step``."""
    path = _path(run_dir, step)
    if not os.path.isfile(path):
        have = resume_steps(run_dir)
        raise FileNotFoundError(f"no resume state for step {step} in '{run_dir}' (have: "
                                f"{have if have else 'none'}); resume from one of those steps")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise StoreError(f"resume state '{path}' is unreadable ({e}); delete it and resume from an "
                         "earlier step") from None
    meta = json.loads(arrays.pop(_META).tobytes().decode())
    dtypes = json.loads(arrays.pop(_DTYPES).tobytes().decode())
    if _INDEX in arrays:  # packed layout
        data = arrays.pop(_DATA)
        unpacked = {}
        for name, dtype, shape, offset in json.loads(arrays.pop(_INDEX).tobytes().decode()):
            dt = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            unpacked[name] = data[offset:offset + n].view(dt).reshape(shape).copy()
        arrays = unpacked
    for name, dtype in dtypes.items():
        arrays[name] = arrays[name].view(_extension_dtype(dtype))
    return arrays, meta


def _extension_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16 and friends, shipped with JAX

        return np.dtype(getattr(ml_dtypes, name))


def resume_steps(run_dir: str | os.PathLike[str]) -> list[int]:
    """Steps that have a resume state, ascending."""
    folder = os.path.join(run_dir, RESUME_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(folder)) if m)


def prune_resume_states(run_dir: str | os.PathLike[str], keep: int = 2) -> list[int]:
    """Delete all but the newest ``keep`` resume states (and stale temp files); returns deleted steps."""
    if keep < 1:
        raise ValueError(f"keep={keep} would delete every resume state; pass keep >= 1")
    folder = os.path.join(run_dir, RESUME_DIR)
    steps = resume_steps(run_dir)
    doomed = steps[:-keep]
    for step in doomed:
        os.unlink(_path(run_dir, step))
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".step_") and name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))
    return doomed
