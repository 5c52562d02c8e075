"""Crash safety of shard and chunk file creation, without strace: a process killed in the middle of
creating a file leaves no file or a valid one; what it left is cleared by the next writer and
reported by verify; a never-written shard (what the in-place creation of earlier versions left)
reads as empty and is replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import store
import store._shard_files as shard_files
from store import ArchiveWriter, StoreError, open_archive, verify_archive

SPECS = {"a": ((3, 4), "float32"), "b": ((5,), "float32")}
LEAF = Path("checkpoints.zarr") / "leaves" / "a" / "c.0.0.0"  # the shard of leaf "a" holding slots 0..63


def _leaves(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {n: rng.standard_normal(s).astype(d) for n, (s, d) in SPECS.items()}


def _stale(run: Path) -> list[str]:
    return [str(p) for p in (run / "checkpoints.zarr").rglob("*.tmp")]


KILLED_CREATING = """
import os, sys
import numpy as np
import store._files as files
from store import ArchiveWriter
run, kill_at = sys.argv[1], int(sys.argv[2])
specs = {"a": ((3, 4), "float32"), "b": ((5,), "float32")}
w = ArchiveWriter(run, specs)
real, calls = files.write_all, [0]
def write_all(fd, data, offset):
    calls[0] += 1
    if calls[0] == kill_at:
        os._exit(9)  # no except, no finally: like SIGKILL
    return real(fd, data, offset)
files.write_all = write_all
rng = np.random.default_rng(0)
w.write_checkpoint(0, {n: rng.standard_normal(s).astype(d) for n, (s, d) in specs.items()})
"""


@pytest.mark.parametrize("kill_at", [1, 2])  # before leaf a's data / after its data, before its index
def test_a_process_dying_inside_shard_creation_leaves_a_readable_archive(tmp_path, kill_at):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", KILLED_CREATING, str(run), str(kill_at)], capture_output=True,
                         text=True)
    assert res.returncode == 9, res.stderr
    assert not (run / LEAF).exists()  # only its temporary file: the shard never appears half-made
    assert len(_stale(run)) == 1
    notes: list[str] = []
    assert verify_archive(run, notes) == []
    assert len(notes) == 1 and _stale(run)[0] in notes[0] and "killed writer" in notes[0]
    assert open_archive(run).n_committed == 0
    w = ArchiveWriter(run, SPECS)  # the next writer removes the temporary file, then writes
    assert _stale(run) == []
    for s in (0, 10):
        w.write_checkpoint(s, _leaves(s))
    r = open_archive(run)
    assert list(r.steps) == [0, 10]
    assert all(np.array_equal(r.load(s)[n], _leaves(s)[n]) for s in (0, 10) for n in SPECS)
    notes = []
    assert verify_archive(run, notes) == [] and notes == []


def _zero_index(path: Path, per_file: int = 64) -> None:
    """What a writer killed after creating a shard in place (earlier versions) left: a zeroed index."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - (per_file * 16 + 4))
        f.write(bytes(per_file * 16 + 4))


def test_a_never_written_shard_reads_as_empty_and_the_next_write_replaces_it(tmp_path):
    run = tmp_path / "run"
    w = ArchiveWriter(run, SPECS)
    w.write_checkpoint(0, _leaves(0))
    w.truncate_after(-1)  # uncommit it: the shard holds no committed checkpoint
    _zero_index(run / LEAF)
    assert shard_files.read_slots(str(run / LEAF), 64, True, [0, 1], 48) == [None, None]
    notes: list[str] = []
    assert verify_archive(run, notes) == []
    assert len(notes) == 1 and str(run / LEAF) in notes[0] and "never written" in notes[0]
    w = ArchiveWriter(run, SPECS)
    for s in (0, 10):
        w.write_checkpoint(s, _leaves(s))
    r = open_archive(run)
    assert all(np.array_equal(r.load(s)[n], _leaves(s)[n]) for s in (0, 10) for n in SPECS)
    assert verify_archive(run) == []


def test_verify_names_a_damaged_shard_index_and_the_steps_it_holds(tmp_path):
    run = tmp_path / "run"
    w = ArchiveWriter(run, SPECS)
    for s in (0, 10, 20):
        w.write_checkpoint(s, _leaves(s))
    path = run / LEAF
    with open(path, "r+b") as f:  # one bit of the index's entry for slot 5 (an empty slot)
        f.seek(path.stat().st_size - (64 * 16 + 4) + 5 * 16)
        f.write(b"\x00")
    problems = verify_archive(run)
    line = [p for p in problems if p.startswith(f"shard file {path} of array 'a'")]
    assert len(line) == 1 and "damaged index (crc32c mismatch)" in line[0], problems
    assert "steps 0, 10, 20;" in line[0] and "restore" in line[0]
    with pytest.raises(StoreError, match=r"checkpoint at step 30 cannot be written .*damaged index.*store.verify_archive"):
        w.write_checkpoint(30, _leaves(30))  # a clear sentence, not zarr's checksum message; nothing changed
    assert list(open_archive(run).steps) == [0, 10, 20]


def test_verify_names_a_shard_whose_index_points_outside_it(tmp_path):
    run = tmp_path / "run"
    ArchiveWriter(run, SPECS).write_checkpoint(0, _leaves(0))
    path = run / LEAF
    n_index = 64 * 16 + 4
    raw = bytearray(path.read_bytes())
    entries = np.frombuffer(bytes(raw[-n_index:-4]), "<u8").reshape(64, 2).copy()
    entries[1] = (10**9, 48)  # slot 1 "at" 1 GB: beyond the file, with a valid crc
    raw[-n_index:] = entries.tobytes() + shard_files._crc(entries)
    path.write_bytes(bytes(raw))
    problems = verify_archive(run)
    assert any(p.startswith(f"shard file {path} of array 'a'") and "slot 1" in p and "steps 0;" in p
               for p in problems), problems


def test_a_failed_chunk_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    import store._files as files
    from store import _zarr_io as zio

    path = str(tmp_path / "c.0")
    zio.write_chunk_file(path, b"old bytes")

    def full_disk(fd, data, offset):
        files.os.pwrite(fd, data[:3], offset)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_all", full_disk)
    with pytest.raises(OSError, match="No space"):
        zio.write_chunk_file(path, b"new bytes")
    assert open(path, "rb").read() == b"old bytes" and os.listdir(tmp_path) == ["c.0"]


def test_a_run_dir_train_left_before_run_json_is_unstarted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock-train").write_text("")
    assert store.is_unstarted_run(run)
    ArchiveWriter(run, SPECS)  # an archive with no checkpoint yet
    assert store.is_unstarted_run(run)
    with pytest.raises(FileNotFoundError, match=r"holds no run yet: .* start the run again into"):
        store.read_run_json(run)
    ArchiveWriter(run, SPECS).write_checkpoint(0, _leaves(0))  # a committed checkpoint is kept: not empty
    assert not store.is_unstarted_run(run)
    other = tmp_path / "other"
    ArchiveWriter(other, SPECS)  # no train lock: not a train's leftovers (an import, a user's files)
    assert not store.is_unstarted_run(other)
    with pytest.raises(FileNotFoundError, match=r"not a run directory \(no run.json\)"):
        store.read_run_json(other)
