"""SIGKILLs injected at exact system calls of `scalars train` (strace -e inject=...:signal=SIGKILL):
every kill lands, and the run it leaves is either resumable (`scalars verify` passes, `--resume`
finishes bit-identical to an uninterrupted run) or, killed before run.json, reusable by `--out`.

strace counts calls per thread: the main thread makes one pwrite64 (the pid into .lock-train), the
background writer makes all the others, beginning with the first save's shard files. So pwrite64
call 1 is a kill before run.json exists, call 2 the index write of the first shard file the first
save creates (the window that made runs unresumable), call 3 and on later files of that save.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

import store
from trainer.train import train

from tests.trainer.test_train import assert_same_archives, assert_same_metrics, cli, tiny_config

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace is not installed (apt-get install strace): it injects the SIGKILLs")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(config file, uninterrupted run) of the tiny config."""
    folder = tmp_path_factory.mktemp("kill_ref")
    config = folder / "cfg.json"
    config.write_text(json.dumps(tiny_config()))
    train(tiny_config(), folder / "run")
    return config, folder / "run"


def _killed_train(config: Path, run: Path, inject: str, *path_filter: str) -> bool:
    """Run `scalars train` under strace with ``inject``; True if the SIGKILL landed."""
    filters = [a for p in path_filter for a in ("-P", p)]
    res = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", *filters, "-e", f"inject={inject}",
                          sys.executable, "-m", "cli.app", "train", "--config", str(config), "--out", str(run), "-q"],
                         capture_output=True, text=True)
    return res.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


def _assert_resumes_bit_identical(run: Path, reference_run: Path, n_checkpoints: int = 7) -> None:
    assert store.is_run_dir(run) and store.open_archive(run).n_committed < n_checkpoints  # a partial store
    ok = cli("verify", str(run))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    done = cli("train", "--resume", str(run), "-q")
    assert done.returncode == 0, done.stderr
    assert_same_archives(reference_run, run)
    assert_same_metrics(reference_run, run)
    assert cli("verify", str(run)).returncode == 0
    assert not list(run.rglob("*.tmp")), "the resumed writer leaves no temporary file"


def _assert_reusable_by_out(run: Path, config: Path, reference_run: Path) -> None:
    assert run.is_dir() and not store.is_run_dir(run)  # killed before run.json
    for args in (["train", "--resume", str(run), "-q"], ["verify", str(run)]):
        res = cli(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "holds no run yet" in res.stderr and f"--out {run}" in res.stderr, res.stderr
    again = cli("train", "--config", str(config), "--out", str(run), "-q")
    assert again.returncode == 0, again.stderr
    assert_same_archives(reference_run, run)
    assert_same_metrics(reference_run, run)


def _run_cases(cases, config, reference_run, tmp_path) -> None:
    landed = 0
    for i, (inject, before_run_json) in enumerate(cases):
        run = tmp_path / f"killed{i}"
        assert _killed_train(config, run, inject), f"the SIGKILL at {inject} did not land"
        landed += 1
        if before_run_json:
            _assert_reusable_by_out(run, config, reference_run)
        else:
            _assert_resumes_bit_identical(run, reference_run)
    assert landed == len(cases)


@pytest.mark.slow
def test_kill_in_the_first_shard_creation_and_before_run_json(reference, tmp_path):
    config, reference_run = reference
    _run_cases([("pwrite64:signal=SIGKILL:when=2", False),  # first shard file: data written, index not
                ("rename:signal=SIGKILL:when=1", True)],  # the archive's first metadata file: before run.json
               config, reference_run, tmp_path)


@pytest.mark.slow
def test_kill_at_more_writes_of_the_first_save(reference, tmp_path):
    config, reference_run = reference
    _run_cases([("pwrite64:signal=SIGKILL:when=1", True)]  # the lock file's pid: before anything else
               + [(f"pwrite64:signal=SIGKILL:when={n}", False) for n in (3, 4, 7)]
               + [("fsync:signal=SIGKILL:when=3", False)],  # the first shard's temporary file, before its rename
               config, reference_run, tmp_path)


def _pwrites_per_checkpoint(run: Path) -> int:
    """The writer's pwrite64 calls per checkpoint: data and index per array in shard files, one per
    array with a file per checkpoint (the same whether a file is created or written in place)."""
    folders = [p.parent for p in (run / "checkpoints.zarr").rglob("zarr.json") if p.parent.name != "leaves"]
    arrays = [zarr.open_array(str(f), mode="r") for f in folders if f != run / "checkpoints.zarr"]
    return sum(2 if a.shards else 1 for a in arrays)


@pytest.mark.slow
def test_kill_in_the_shard_creation_at_slot_64(tmp_path):
    """Every step saved: checkpoint 64 opens second shard files, last the commit record 'step''s."""
    cfg = tiny_config("checkpoints.schedule=every:1", "train.steps=70")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    reference_run = tmp_path / "reference"
    train(cfg, reference_run)
    per = _pwrites_per_checkpoint(reference_run)
    landed = 0
    for i, n in enumerate((65 * per, 65 * per - 1)):  # step's c.1: index write, data write
        run = tmp_path / f"killed{i}"
        assert _killed_train(config, run, f"pwrite64:signal=SIGKILL:when={n}"), f"the SIGKILL at pwrite64 {n} did not land"
        landed += 1
        assert store.open_archive(run).n_committed == 64  # checkpoint 64 written, its commit not
        _assert_resumes_bit_identical(run, reference_run, 71)
    assert landed == 2
