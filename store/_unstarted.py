"""Run directories ``scalars train`` started but was stopped in before it wrote ``run.json``.

``train`` takes its lock (``.lock-train``), creates the checkpoint archive and ``metrics.zarr``,
then writes ``run.json``; checkpoints, resume states and metric rows come only after. A directory
killed in between holds nothing anyone could lose: it is treated as empty, so ``scalars train
--out`` reuses it (clearing those files under the lock) and ``--resume`` says to do that.
"""

from __future__ import annotations

import os
import re
import shutil

from .run import RUN_JSON
from .remedies import remedy

__all__ = ["is_unstarted_run", "clear_unstarted_run", "unstarted_message"]

_LOCK = ".lock-train"
_PARTS = ("checkpoints.zarr", "metrics.zarr", "resume")
_RUN_JSON_TMP = re.compile(r"^\.run\.json\.[A-Za-z0-9_]{8}\.tmp$")


def is_unstarted_run(run_dir: str | os.PathLike[str]) -> bool:
    """True if ``run_dir`` holds ``.lock-train`` and otherwise only what ``train`` writes before
    ``run.json`` (a checkpoint archive with no committed checkpoint, ``metrics.zarr``, an empty
    ``resume`` folder, a temporary ``run.json``); False for anything else or anything unreadable."""
    from . import _zarr_io as zio
    from .checkpoints import ARCHIVE, open_archive
    from .resume import resume_steps

    run_dir = os.fspath(run_dir)
    try:
        names = set(os.listdir(run_dir))
    except OSError:
        return False
    if RUN_JSON in names or _LOCK not in names:
        return False
    if any(n not in (_LOCK, *_PARTS) and not _RUN_JSON_TMP.match(n) for n in names):
        return False
    if resume_steps(run_dir):
        return False
    if ARCHIVE in names and os.path.isfile(os.path.join(run_dir, ARCHIVE, "zarr.json")):
        try:
            if "kind" not in zio.attrs(zio.open_group(os.path.join(run_dir, ARCHIVE), "r")):
                return True  # its creation was cut short (the layout attributes come last)
            return open_archive(run_dir).n_committed == 0
        except Exception:
            return False
    return True


def clear_unstarted_run(run_dir: str | os.PathLike[str]) -> None:
    """Delete what ``train`` wrote before being stopped (call it holding the ``train`` lock, after
    ``is_unstarted_run``); the lock file stays."""
    run_dir = os.fspath(run_dir)
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name in _PARTS:
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        elif _RUN_JSON_TMP.match(name):
            os.unlink(path)


def unstarted_message(run_dir: str | os.PathLike[str]) -> str:
    """The sentence for a command given such a directory as a run."""
    return (f"'{run_dir}' holds no run yet: its training was stopped before it wrote run.json, so no "
            f"checkpoint was saved; {remedy('train_again', run=str(run_dir))}")
