"""Faults: real SIGKILLs, corrupted chunks, a full disk, two writers; nothing lost, nothing half-visible."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import store
import scalars
from trainer.config import resolve_config

from tests._archive_files import checkpoint_chunk, flip_byte
from tests.conftest import TINY_OVERRIDES

SUITE = ["induction_score", "prev_token_score", "ablated_loss"]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, **kw)


def archives_equal(a, b) -> bool:
    ra, rb = store.open_archive(a), store.open_archive(b)
    if list(ra.steps) != list(rb.steps):
        return False
    return all(np.array_equal(ra.load(int(s))[n], rb.load(int(s))[n]) for s in ra.steps for n in ra.leaf_names)


# ---------------------------------------------------------------- corruption of stored chunks

@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_names_step_and_array_of_a_damaged_checkpoint_chunk(tiny_run, copy_run, damage):
    run = copy_run(tiny_run)
    path, offset, _ = checkpoint_chunk(run, "*blocks.1.attn.W_K*", 3)  # slot 3 = step 30
    if damage == "flip":
        flip_byte(run, "*blocks.1.attn.W_K*", 3, at=20)
    elif damage == "truncate":  # the shard file holding steps 0..60 is cut inside step 30's bytes
        os.truncate(path, offset + 20)
    else:
        path.unlink()
    res = cli("verify", str(run))
    assert res.returncode == 1
    assert "step 30" in res.stdout and "blocks.1.attn.W_K" in res.stdout, res.stdout
    damaged = {int(m.group(1)) for m in re.finditer(r"checkpoint at step (\d+): [^\n]*'blocks.1.attn.W_K'", res.stdout)}
    if damage == "flip":  # bit rot in one checkpoint names that checkpoint only
        assert damaged == {30}, res.stdout
    else:  # a lost or cut file loses every checkpoint it holds, each named
        assert damaged == set(range(0, 70, 10)), res.stdout


def test_verify_names_a_damaged_scalar_cell(tiny_run, copy_run):
    run = copy_run(tiny_run)
    scalars.compute(run, ["induction_score"])
    cell = next(p for p in (run / "scalars.zarr" / "induction_score" / "c").rglob("*") if p.is_file())
    cell.write_bytes(cell.read_bytes()[:5])
    res = cli("verify", str(run))
    assert res.returncode == 1 and "induction_score" in res.stdout, res.stdout


@pytest.mark.slow
def test_resume_refuses_a_corrupted_latest_checkpoint_and_offers_the_previous(tiny_run, copy_run):
    run = copy_run(tiny_run)
    assert store.resume_steps(run) == [50, 60]  # the last two checkpoints keep their optimizer state
    flip_byte(run, "*W_U*", 6, at=0)  # slot 6 = step 60, the latest
    before = sorted(p.name for p in (run / "checkpoints.zarr").rglob("*"))
    res = cli("train", "--resume", str(run), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "latest checkpoint (60)" in res.stderr and "--from-step 50" in res.stderr, res.stderr
    assert sorted(p.name for p in (run / "checkpoints.zarr").rglob("*")) == before
    res = cli("train", "--resume", str(run), "--from-step", "50", "-q")
    assert res.returncode == 0, res.stderr
    assert archives_equal(run, tiny_run)


# ---------------------------------------------------------------- a full disk

DISK_FULL = """
import errno, sys
import zarr.storage
limit = int(sys.argv[1])
calls = {"n": 0}
original = zarr.storage.LocalStore.set
async def set(self, key, value):
    calls["n"] += 1
    if calls["n"] > limit:
        raise OSError(errno.ENOSPC, "No space left on device", key)
    return await original(self, key, value)
zarr.storage.LocalStore.set = set
import store._files as files  # checkpoint chunk and shard files are written directly, through write_all
original_write_all = files.write_all
def write_all(fd, data, offset):
    calls["n"] += 1
    if calls["n"] > limit:
        raise OSError(errno.ENOSPC, "No space left on device")
    return original_write_all(fd, data, offset)
files.write_all = write_all
from cli.app import app
sys.argv = ["scalars", *sys.argv[2:]]
app()
"""


@pytest.mark.slow
def test_disk_full_during_training_keeps_the_archive_valid(tiny_run, tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(resolve_config("induction-tiny", None, TINY_OVERRIDES)))
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", DISK_FULL, "150", "train", "--config", str(config), "--out", str(run),
                          "-q"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "error: no space left on the disk" in res.stderr and "free space there" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert 0 < len(store.open_archive(run).steps) < 7
    assert store.verify_archive(run) == []
    assert cli("train", "--resume", str(run), "-q").returncode == 0
    assert archives_equal(run, tiny_run)


@pytest.mark.slow
def test_disk_full_during_compute_exposes_no_partial_cell(tiny_run, copy_run):
    run = copy_run(tiny_run)
    reference = copy_run(tiny_run, "reference")
    scalars.compute(reference, SUITE)
    args = ["compute", str(run), "-q", *sum((["--type", t] for t in SUITE), [])]
    res = subprocess.run([sys.executable, "-c", DISK_FULL, "40", *args], capture_output=True, text=True)
    assert res.returncode != 0 and "error: no space left on the disk" in res.stderr and "free space there" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert store.verify_scalars(run) == []
    for name in SUITE:
        mask = store.computed_mask(run, name)
        np.testing.assert_array_equal(store.open_scalars(run)[name].values[mask],
                                      store.open_scalars(reference)[name].values[mask])
    assert cli(*args).returncode == 0
    for name in SUITE:
        np.testing.assert_array_equal(store.open_scalars(run)[name].values, store.open_scalars(reference)[name].values)


# ---------------------------------------------------------------- concurrency and determinism

@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_is_refused(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(resolve_config("induction-tiny", None, TINY_OVERRIDES + ["train.steps=100000"])))
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cli.app", "train", "--config", str(config), "--out", str(run), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / ".lock-train").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    second = cli("train", "--resume", str(run), "-q")
    first.kill()
    first.wait()
    assert second.returncode == 2 and "in use by another train process" in second.stderr, second.stderr


def test_the_same_compute_twice_gives_bit_identical_scalars(tiny_run, copy_run):
    a, b = copy_run(tiny_run, "a"), copy_run(tiny_run, "b")
    scalars.compute(a, SUITE + ["loss", "composition_k"])
    scalars.compute(b, SUITE + ["loss", "composition_k"])
    for name in SUITE + ["loss", "composition_k"]:
        np.testing.assert_array_equal(store.open_scalars(a)[name].values, store.open_scalars(b)[name].values)


# ---------------------------------------------------------------- SIGKILL at many random points (slow)

def _kill_at_random(cmd: list[str], seconds: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_training_at_20_random_points(tiny_run, tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(resolve_config("induction-tiny", None, TINY_OVERRIDES)))
    rng = random.Random(20261124)
    for trial in range(20):
        run = tmp_path / f"run{trial}"
        _kill_at_random([sys.executable, "-m", "cli.app", "train", "--config", str(config), "--out", str(run), "-q"],
                        rng.uniform(2.0, 9.0))
        if not store.is_run_dir(run):
            continue  # killed before run.json: nothing was written
        assert store.verify_archive(run) == [] or not (run / "checkpoints.zarr").exists()
        res = cli("train", "--resume", str(run), "-q")
        assert res.returncode == 0, res.stderr
        assert archives_equal(run, tiny_run), f"trial {trial}"
        shutil.rmtree(run)


@pytest.mark.slow
def test_sigkill_during_compute_at_20_random_points(tiny_run, copy_run):
    reference = copy_run(tiny_run, "reference")
    scalars.compute(reference, SUITE, block_size=1)
    expected = {n: store.open_scalars(reference)[n].values for n in SUITE}
    rng = random.Random(7)
    args = ["compute", "-q", "--block-size", "1", *sum((["--type", t] for t in SUITE), [])]
    for trial in range(20):
        run = copy_run(tiny_run, f"run{trial}")
        _kill_at_random([sys.executable, "-m", "cli.app", args[0], str(run), *args[1:]], rng.uniform(1.5, 7.0))
        for name in SUITE:
            if not (run / "scalars.zarr").exists():
                break
            try:
                mask = store.computed_mask(run, name)
            except KeyError:
                continue
            values = store.open_scalars(run)[name].values
            np.testing.assert_array_equal(values[mask], expected[name][mask])  # no partial cell visible
            assert np.isnan(values[~mask]).all()
        assert cli(*args[:1], str(run), *args[1:]).returncode == 0
        for name in SUITE:
            np.testing.assert_array_equal(store.open_scalars(run)[name].values, expected[name])
        shutil.rmtree(run)
