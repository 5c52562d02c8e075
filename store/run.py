"""Run directory metadata: ``RUN_DIR/run.json`` (atomic, versioned) and per-purpose process locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_write
from .errors import StoreError
from .remedies import remedy

__all__ = ["SCHEMA_VERSION", "RUN_JSON", "write_run_json", "read_run_json", "is_run_dir", "run_lock"]

SCHEMA_VERSION = 1
RUN_JSON = "run.json"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def write_run_json(run_dir: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Write ``info`` plus ``schema_version`` to ``RUN_DIR/run.json`` atomically (creates RUN_DIR)."""
    os.makedirs(run_dir, exist_ok=True)
    record = {**info, "schema_version": SCHEMA_VERSION}
    try:
        text = json.dumps(record, indent=2, default=_json_default, allow_nan=True)
    except TypeError as e:
        raise StoreError(f"run info for '{run_dir}' is not JSON-serializable ({e}); pass plain "
                         "numbers, strings, lists and dicts") from None
    atomic_write(os.path.join(run_dir, RUN_JSON), lambda f: f.write(text.encode() + b"\n"))


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``RUN_DIR/run.json``; refuse a missing file (saying so when ``train`` was stopped before
    writing it), bad JSON, or a newer schema version."""
    path = os.path.join(run_dir, RUN_JSON)
    if not os.path.isfile(path):
        from ._unstarted import is_unstarted_run, unstarted_message

        if is_unstarted_run(run_dir):
            raise FileNotFoundError(unstarted_message(run_dir))
        raise FileNotFoundError(f"'{run_dir}' is not a run directory (no run.json); {remedy('written_run')}")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"'{path}' is not valid JSON ({e}); restore it from a copy or re-create "
                         "the run") from None
    if not isinstance(info, dict):
        raise StoreError(f"'{path}' does not hold a JSON object; restore it or re-create the run")
    version = info.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"'{path}' has schema_version {version!r}, not an integer; restore run.json from a copy "
                         "or re-create the run")
    if version > SCHEMA_VERSION:
        raise StoreError(f"'{run_dir}' was written by a newer version (schema {version} > "
                         f"{SCHEMA_VERSION}); upgrade the package")
    return info


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory holding a ``run.json``."""
    return os.path.isfile(os.path.join(path, RUN_JSON))


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], purpose: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock ``RUN_DIR/.lock-<purpose>`` for this process's work."""
    if not purpose or not all(c.isalnum() or c in "-_" for c in purpose):
        raise ValueError(f"lock purpose {purpose!r} must be a word of letters, digits, '-' or '_'")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory '{run_dir}' does not exist; create it or pass an "
                                "existing run directory")
    path = os.path.join(run_dir, f".lock-{purpose}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreError(f"run directory {run_dir} is in use by another {purpose} process "
                             f"(pid {holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
