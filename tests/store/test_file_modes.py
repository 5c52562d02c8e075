"""Files a run is made of get the mode a plain `open` gives (0o666 less the umask), so that the other
users of a shared run directory can read them; a build killed midway leaves nothing the next one keeps."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

import store
from trainer.interop._files import build_atomically, remove_stale_partials


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path):
    from trainer.interop._files import write_checkpoint_dir

    old = os.umask(0o022)
    try:
        store.write_run_json(tmp_path, {"model": {}})
        store.write_resume_state(tmp_path, 10, {"x": np.zeros(3)}, {"step": 10})
        assert mode(tmp_path / "run.json") == 0o644
        resume = [f for f in tmp_path.rglob("*.npz")]
        assert resume and all(mode(f) == 0o644 for f in resume)
        write_checkpoint_dir(tmp_path / "hf", {"model_type": "gpt2"}, {"w": np.zeros((2, 2), np.float32)})
        assert mode(tmp_path / "hf") == 0o755
        assert {f.name: mode(f) for f in (tmp_path / "hf").iterdir()} == {"config.json": 0o644,
                                                                          "model.safetensors": 0o644}
        os.umask(0o002)
        assert store.file_mode() == 0o664
        store.write_run_json(tmp_path, {"model": {}})
        assert mode(tmp_path / "run.json") == 0o664
    finally:
        os.umask(old)


def test_a_partial_build_left_by_a_killed_process_is_removed_by_the_next(tmp_path):
    out = tmp_path / "export"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".export.{dead.pid}.abcd1234.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".export.{os.getpid()}.efgh5678.partial"  # a build still running: kept
    alive.mkdir()
    build_atomically(out, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert not stale.exists() and alive.exists()
    assert (out / "config.json").read_text() == "{}"
    assert remove_stale_partials(out) == []


def test_a_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "export"

    def fail(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    try:
        build_atomically(out, fail)
    except RuntimeError:
        pass
    assert not out.exists() and not list(tmp_path.glob(".export.*"))
