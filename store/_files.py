"""Small filesystem helpers: atomic writes (temp file + fsync + rename) and blocking file locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_write", "write_all", "fsync_dir", "exclusive_lock", "shared_lock"]


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of the open descriptor ``fd`` (short writes continue);
    an OSError (e.g. ENOSPC) propagates."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (after a rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(fileobj)`` into a temp file in the same folder, fsync, rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


@contextlib.contextmanager
def _flock(path: str | os.PathLike[str], mode: int) -> Iterator[None]:
    try:
        fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if mode != fcntl.LOCK_SH:
            raise
        yield  # a read-only location: readers go on without the lock
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def exclusive_lock(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """Block until an exclusive ``flock`` on ``path`` (created if absent) is held."""
    return _flock(path, fcntl.LOCK_EX)


def shared_lock(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """Block until a shared ``flock`` on ``path`` (created if absent) is held."""
    return _flock(path, fcntl.LOCK_SH)
