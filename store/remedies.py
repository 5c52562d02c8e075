"""What to do about a store problem, named by key and said in the words of whoever reads it.

The store ends its error sentences with `remedy(key, **fields)`. By default that is the library's
wording (functions and arguments); an interface says it its own way while it runs a command
(`speaking(words)`: the CLI names its commands and flags), so the store knows no interface's vocabulary.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

__all__ = ["LIBRARY_WORDS", "remedy", "speaking"]

LIBRARY_WORDS: dict[str, str] = {
    "verify": "check it with store.verify_archive({run!r})",
    "verify_scalars": "store.verify_scalars({run!r}) lists every damaged cell",
    "written_run": "pass a run directory written by the trainer or an importer",
    "trained_run": "pass a run directory the trainer wrote",
    "train_again": "start the run again into {run!r} (the directory is reused)",
    "resume": "resuming the training of {run!r}",
    "next_archive_writer": "the next write to the archive",
    "next_scalars_writer": "the next compute into the store",
    "compute_rerun": "compute the scalars again",
    "compute_first": "compute scalars for {run!r} first",
    "compute_again": "delete it and compute the scalars again",
    "recompute_missing_cell": "compute '{name}' for {run!r} again to fill it",
    "recompute_damaged_cell": "recompute '{name}' at step {step} of {run!r} with force=True",
    "force": "recompute it with force=True (at every step you want it at)",
    "force_or_rename": "recompute it with force=True, or store it under another name",
    "force_dim": "recompute every scalar with that dim with force=True, or use another run directory",
    "stored_probe": "pass the probe they were computed on as probe=",
    "restore_definition": "restore that code, or register the type with an explicit version=",
    "stored_options": "pass the stored options",
    "reimport": "restore the file, or import the series again with copy=True (which keeps its own copy)",
    "export_format": "pass format='netcdf' or format='csv' (or an output file ending in .nc or .csv)",
    "export_type": "pass a stored name in types=",
}
_spoken: dict[str, str] | None = None  # process-wide: store errors are also worded in reader threads
_lock = threading.Lock()


def remedy(key: str, **fields: object) -> str:
    """The sentence for `key` in the words now spoken (the library's unless inside `speaking`)."""
    words = _spoken or LIBRARY_WORDS
    return words.get(key, LIBRARY_WORDS[key]).format(**fields)


@contextlib.contextmanager
def speaking(words: Mapping[str, str]) -> Iterator[None]:
    """Say remedies in `words` (key -> format string over the same fields) inside this block."""
    global _spoken
    with _lock:
        before, _spoken = _spoken, {**LIBRARY_WORDS, **words}
    try:
        yield
    finally:
        with _lock:
            _spoken = before
