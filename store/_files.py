"""Small filesystem helpers: atomic writes (temp file + fsync + rename), stale temp files, blocking locks.

Every file made here is built under a temporary name in its own folder (``.<name>.<random>.tmp``)
and renamed into place, so a killed process leaves either no file or the whole one, plus at most a
stale temporary file that ``remove_stale_temps`` deletes (the next writer calls it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_write", "atomic_write_fd", "write_all", "fsync_dir", "stale_temp_files", "remove_stale_temps",
           "exclusive_lock", "shared_lock"]

# ours (``atomic_write``: mkstemp's 8 characters; ``atomic_write_fd``: 16 hex digits) and zarr's
# LocalStore (``<name>.<uuid4 hex>.partial``)
_STALE = re.compile(r"^\..+\.[A-Za-z0-9_]{8,16}\.tmp$|^.+\.[0-9a-f]{32}\.partial$")


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


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file: 0o666 less the process umask (read without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly) and back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(fileobj)`` into a temp file in the same folder, fsync, rename. The file
    gets the mode a plain ``open`` would give it (mkstemp's 0o600 would lock out a run's other users)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
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


def atomic_write_fd(path: str | os.PathLike[str], write: Callable[[int], None], *, durable: bool = True) -> None:
    """Write ``path`` via ``write(fd)`` (a new empty file, mode 0o666 less the umask) under a temporary
    name in the same folder (made if absent), then rename it into place. ``durable`` fsyncs the file
    before the rename and the folder after it (a power cut then leaves the old file or the new one
    too); without it a kill still does. An OSError (ENOSPC) propagates, the temporary file removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            write(fd)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(folder)


def stale_temp_files(root: str | os.PathLike[str]) -> list[str]:
    """Temporary files under ``root`` left by killed writers (``atomic_write``, ``atomic_write_fd``,
    zarr's LocalStore), sorted; only meaningful while no writer is running."""
    found = []
    for folder, _, names in os.walk(os.fspath(root)):
        found.extend(os.path.join(folder, n) for n in names if _STALE.match(n))
    return sorted(found)


def remove_stale_temps(root: str | os.PathLike[str]) -> list[str]:
    """Delete ``stale_temp_files(root)`` (call it holding the writer's lock); returns what was removed."""
    removed = []
    for path in stale_temp_files(root):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


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
