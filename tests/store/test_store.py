"""Run directory, checkpoint archive and resume state: round trips, commit semantics, integrity."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import zarr

import store
from store import (ArchiveWriter, StoreError, open_archive, prune_resume_states, read_resume_state,
                   read_run_json, resume_steps, run_lock, verify_archive, write_resume_state, write_run_json)
from store._names import safe_key

from tests._archive_files import slot_region
from tests._paths import ROOT

SPECS = {
    "blocks.0.attn.W_Q": ((2, 4, 3), "float32"),
    "blocks.0.attn.b_Q": ((2, 3), "float32"),
    "embed/W_E": ((5, 4), "float32"),
    "_count": ((), "int32"),
}


def _leaves(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {n: (rng.standard_normal(s) * 10).astype(d) for n, (s, d) in SPECS.items()}


def _archive(tmp_path, steps=(0, 10, 20, 30, 40), **kw) -> str:
    run = str(tmp_path / "run")
    w = ArchiveWriter(run, SPECS, **kw)
    for s in steps:
        w.write_checkpoint(s, _leaves(s))
    return run


def _chunk(run: str, leaf: str, slot: int) -> tuple[str, int, int]:
    """(file, offset, length) of a leaf's bytes for checkpoint slot ``slot``."""
    path, offset, length = slot_region(os.path.join(run, "checkpoints.zarr", "leaves", safe_key(leaf)), slot)
    return str(path), offset, length


# run directory -------------------------------------------------------------------------------

def test_run_json_round_trip_and_errors(tmp_path):
    run = tmp_path / "r"
    write_run_json(run, {"config": {"d_model": 64, "lr": np.float32(0.5)}, "seed": np.int64(3)})
    info = read_run_json(run)
    assert info["schema_version"] == store.SCHEMA_VERSION and info["seed"] == 3 and info["config"]["lr"] == 0.5
    assert store.is_run_dir(run) and not store.is_run_dir(tmp_path)
    assert not [f for f in os.listdir(run) if f != "run.json"]  # no temp file left
    with pytest.raises(FileNotFoundError, match=r"is not a run directory \(no run.json\); pass a run directory written by the trainer"):
        read_run_json(tmp_path)
    (run / "run.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StoreError, match=r"written by a newer version \(schema 99 > 1\); upgrade the package"):
        read_run_json(run)


def test_run_lock_refuses_second_holder(tmp_path):
    with run_lock(tmp_path, "train"):
        assert open(tmp_path / ".lock-train").read().strip() == str(os.getpid())
        with pytest.raises(StoreError, match=rf"in use by another train process \(pid {os.getpid()}\); wait for it"):
            with run_lock(tmp_path, "train"):
                pass
        with run_lock(tmp_path, "compute"):  # other purposes are independent
            pass
    with run_lock(tmp_path, "train"):  # released on exit
        pass


# checkpoint archive ------------------------------------------------------------------------------

def test_archive_round_trip(tmp_path):
    run = _archive(tmp_path, capacity=2)  # forces two geometric growths
    r = open_archive(run)
    assert r.steps.tolist() == [0, 10, 20, 30, 40] and r.n_committed == 5
    assert r.leaf_names == sorted(SPECS)
    assert r.leaf_specs == {n: (s, d) for n, (s, d) in SPECS.items()}
    for s in r.steps:
        got, want = r.load(s), _leaves(int(s))
        for n in SPECS:
            assert got[n].dtype == want[n].dtype and np.array_equal(got[n], want[n])
    for steps in ([10, 20, 30], [40, 0, 20], []):
        block = r.load_block(steps)
        for n in SPECS:
            assert block[n].shape == (len(steps), *SPECS[n][0])
            for i, s in enumerate(steps):
                assert np.array_equal(block[n][i], _leaves(s)[n])
    assert all(r.verify_checksum(s) for s in r.steps)


def test_archive_groups_checkpoints_in_shard_files_that_zarr_reads(tmp_path):
    specs = {"big": ((300 * 256,), "float32"), "small": ((3,), "float32")}  # 300 KiB: 2 per file; 64
    run = str(tmp_path / "run")
    w = ArchiveWriter(run, specs, capacity=2)
    values = {s: {n: np.full(shape, s + i, dtype) for i, (n, (shape, dtype)) in enumerate(specs.items())}
              for s in range(5)}
    for s in range(5):
        w.write_checkpoint(s * 10, values[s])
    leaves = os.path.join(run, "checkpoints.zarr", "leaves")
    assert sorted(os.listdir(os.path.join(leaves, "big"))) == ["c.0.0", "c.1.0", "c.2.0", "zarr.json"]
    assert sorted(os.listdir(os.path.join(leaves, "small"))) == ["c.0.0", "zarr.json"]
    assert sorted(os.listdir(os.path.join(run, "checkpoints.zarr", "step"))) == ["c.0", "zarr.json"]
    # every shard has its fixed size from the start: data slots, then the index (16 B a slot + crc32c)
    assert os.path.getsize(os.path.join(leaves, "big", "c.2.0")) == 2 * 300 * 1024 + 2 * 16 + 4
    assert os.path.getsize(os.path.join(leaves, "small", "c.0.0")) == 64 * 12 + 64 * 16 + 4
    for name in specs:  # zarr's own sharding reader agrees with the direct writer and reader
        z = zarr.open_array(os.path.join(leaves, name), mode="r")
        assert z.shards[0] == (2 if name == "big" else 64)
        for s in range(5):
            assert np.array_equal(z[s], values[s][name])
    r = open_archive(run)
    assert np.array_equal(r.load_block([0, 10, 20, 30, 40])["big"], np.stack([values[s]["big"] for s in range(5)]))
    assert zarr.open_array(os.path.join(run, "checkpoints.zarr", "step"), mode="r")[:5].tolist() == [0, 10, 20, 30, 40]
    assert verify_archive(run) == []


def test_a_shard_rewritten_by_zarr_is_still_written_and_read(tmp_path):
    run = _archive(tmp_path, steps=(0, 10))
    z = zarr.open_array(os.path.join(run, "checkpoints.zarr", "leaves", safe_key("embed/W_E")), mode="r+")
    z[1] = _leaves(10)["embed/W_E"]  # zarr rewrites the shard compactly: not the fixed layout
    w = ArchiveWriter(run, SPECS)
    for s in (20, 30):
        w.write_checkpoint(s, _leaves(s))
    r = open_archive(run)
    for s in (0, 10, 20, 30):
        assert all(np.array_equal(r.load(s)[n], _leaves(s)[n]) for n in SPECS)
    assert verify_archive(run) == []


def test_a_failed_shard_write_leaves_earlier_slots_intact(tmp_path, monkeypatch):
    import store._files as files
    import store._shard_files as shard_files

    path = str(tmp_path / "c.0")
    assert shard_files.write_slot(path, 4, True, 0, b"a" * 8)
    real = files.write_all

    def full_disk(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_all", full_disk)
    with pytest.raises(OSError, match="No space"):
        shard_files.write_slot(path, 4, True, 1, b"b" * 8)  # in an existing shard: index untouched
    with pytest.raises(OSError, match="No space"):
        shard_files.write_slot(str(tmp_path / "c.1"), 4, True, 0, b"c" * 8)  # a new shard: removed again
    assert not os.path.exists(tmp_path / "c.1")
    monkeypatch.setattr(files, "write_all", real)
    assert shard_files.read_slots(path, 4, True, [0, 1, 2], 8) == [b"a" * 8, None, None]
    assert shard_files.write_slot(path, 4, True, 1, b"b" * 8)
    assert shard_files.read_slots(path, 4, True, [0, 1], 8) == [b"a" * 8, b"b" * 8]
    with open(path, "r+b") as f:  # a damaged index is refused, not read as empty slots
        f.seek(4 * 8 + 3)
        f.write(b"\x01")
    with pytest.raises(ValueError, match="damaged index"):
        shard_files.read_slots(path, 4, True, [0], 8)


def test_a_shard_index_read_racing_its_update_is_read_again(tmp_path, monkeypatch):
    import store._shard_files as shard_files

    path = str(tmp_path / "c.0")
    shard_files.write_slot(path, 4, True, 0, b"a" * 8)
    real, calls = shard_files._read_index, []

    def torn_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("shard file has a damaged index (crc32c mismatch)")
        return real(*args)

    monkeypatch.setattr(shard_files, "_read_index", torn_once)
    assert shard_files.read_slots(path, 4, True, [0], 8) == [b"a" * 8] and len(calls) == 2


def test_nested_chunk_archives_of_earlier_versions_still_read_and_grow(tmp_path, monkeypatch):
    # an archive written with a file per chunk in nested folders (c/<slot>/0/...) by an earlier version
    import store._zarr_io as zio
    nested = zio.create_array
    monkeypatch.setattr(zio, "create_array",
                        lambda *a, **kw: nested(*a, **{**kw, "flat_chunks": False, "slots_per_file": 1}))
    old = _archive(tmp_path / "old", steps=(0, 10), capacity=2)
    monkeypatch.undo()
    assert os.path.isdir(os.path.join(old, "checkpoints.zarr", "step", "c"))
    w = ArchiveWriter(old, SPECS)  # reopened by this version: appends into the same layout
    for s in (20, 30):
        w.write_checkpoint(s, _leaves(s))
    r = open_archive(old)
    assert r.steps.tolist() == [0, 10, 20, 30]
    for s in r.steps:
        assert all(np.array_equal(r.load(s)[n], _leaves(int(s))[n]) for n in SPECS)
    assert np.array_equal(r.load_block([10, 20, 30])["embed/W_E"], np.stack([_leaves(s)["embed/W_E"] for s in (10, 20, 30)]))
    assert verify_archive(old) == []

def test_archive_to_xarray_is_lazy(tmp_path):
    run = _archive(tmp_path)
    reader = open_archive(run)
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if watching and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))
    watching = True
    sys.addaudithook(audit)
    try:
        ds = reader.to_xarray()
        def is_chunk(path: str) -> bool:
            return os.path.basename(path).startswith("c.") or f"{os.sep}c{os.sep}" in path

        chunk_reads = [p for p in opened if is_chunk(p)]
        assert not chunk_reads, chunk_reads  # no chunk was read
        var = ds["blocks.0.attn.W_Q"]
        assert var.dims == ("step", "blocks.0.attn.W_Q_dim0", "blocks.0.attn.W_Q_dim1", "blocks.0.attn.W_Q_dim2")
        assert var.chunks is not None and ds.step.values.tolist() == [0, 10, 20, 30, 40]
        assert np.array_equal(var.sel(step=30).values, _leaves(30)["blocks.0.attn.W_Q"])
        assert [p for p in opened if is_chunk(p)]  # the hook does see chunk reads
        assert ds["_count"].dims == ("step",)
    finally:
        watching = False


def test_reader_sees_later_commits(tmp_path):
    run = _archive(tmp_path, steps=(0,), capacity=1)
    r = open_archive(run)
    w = ArchiveWriter(run)
    for s in (10, 20, 30):  # grows the arrays past the reader's cached shapes
        w.write_checkpoint(s, _leaves(s))
    assert r.steps.tolist() == [0]
    assert np.array_equal(r.load(30)["embed/W_E"], _leaves(30)["embed/W_E"])  # refreshes on a miss
    assert r.steps.tolist() == [0, 10, 20, 30]


def test_archive_missing_step_names_nearest(tmp_path):
    r = open_archive(_archive(tmp_path))
    with pytest.raises(KeyError, match=r"step 15 is not a committed checkpoint.*nearest committed steps: 10, 20"):
        r.load(15)


def test_crash_before_commit_hides_slot_and_next_write_reuses_it(tmp_path, monkeypatch):
    run = _archive(tmp_path, steps=(0, 10))

    def crash(self, slot, step):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(ArchiveWriter, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        ArchiveWriter(run).write_checkpoint(20, _leaves(20))
    monkeypatch.undo()
    r = open_archive(run)
    assert r.steps.tolist() == [0, 10]  # leaves of slot 2 were written, but the slot is not committed
    assert not r.load(10)["embed/W_E"].sum() == _leaves(20)["embed/W_E"].sum()
    w = ArchiveWriter(run)
    assert w.n_committed == 2
    w.write_checkpoint(15, _leaves(15))  # reuses slot 2
    r.refresh()
    assert r.steps.tolist() == [0, 10, 15] and np.array_equal(r.load(15)["embed/W_E"], _leaves(15)["embed/W_E"])
    assert verify_archive(run) == []


def test_truncate_after_and_rewrite(tmp_path):
    run = _archive(tmp_path)
    w = ArchiveWriter(run)
    assert w.truncate_after(20) == 2 and w.steps.tolist() == [0, 10, 20]
    assert open_archive(run).steps.tolist() == [0, 10, 20]
    w.write_checkpoint(25, _leaves(25))
    r = open_archive(run)
    assert r.steps.tolist() == [0, 10, 20, 25]
    assert np.array_equal(r.load(25)["blocks.0.attn.b_Q"], _leaves(25)["blocks.0.attn.b_Q"])
    assert verify_archive(run) == []


def test_write_validation_errors(tmp_path):
    run = _archive(tmp_path, steps=(0, 10))
    w = ArchiveWriter(run)
    bad = _leaves(20)
    bad["embed/W_E"] = np.zeros((4, 4), np.float32)
    with pytest.raises(StoreError, match=r"leaf 'embed/W_E' at step 20 has shape \(4, 4\), "
                                         r"the archive stores \(5, 4\)"):
        w.write_checkpoint(20, bad)
    with pytest.raises(StoreError, match=r"step 10 is not after the last committed step 10"):
        w.write_checkpoint(10, _leaves(10))
    with pytest.raises(StoreError, match=r"step 5 is not after"):
        w.write_checkpoint(5, _leaves(5))
    bad = _leaves(20)
    bad["_count"] = bad["_count"].astype(np.int64)
    with pytest.raises(StoreError, match=r"dtype int64, the archive stores int32"):
        w.write_checkpoint(20, bad)
    with pytest.raises(StoreError, match=r"missing: \['_count'\]"):
        w.write_checkpoint(20, {k: v for k, v in _leaves(20).items() if k != "_count"})
    with pytest.raises(StoreError, match=r"shape \(2, 3\) float32, got \(2, 4\) float32"):
        ArchiveWriter(run, {**SPECS, "blocks.0.attn.b_Q": ((2, 4), "float32")})
    assert open_archive(run).steps.tolist() == [0, 10]  # nothing changed
    with pytest.raises(FileNotFoundError, match=r"has no checkpoint archive"):
        open_archive(tmp_path)


def test_writer_infers_specs_from_first_checkpoint(tmp_path):
    w = ArchiveWriter(tmp_path / "r")
    w.write_checkpoint(3, _leaves(3))
    assert open_archive(tmp_path / "r").leaf_specs == {n: (s, d) for n, (s, d) in SPECS.items()}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_reports_damaged_chunk(tmp_path, damage):
    run = _archive(tmp_path)
    assert verify_archive(run) == []
    path, offset, _ = _chunk(run, "blocks.0.attn.W_Q", 3)  # slot 3 = step 30, in the shard of slots 0..63
    if damage == "flip":
        with open(path, "r+b") as f:
            f.seek(offset + 7)
            byte = f.read(1)[0]
            f.seek(offset + 7)
            f.write(bytes([byte ^ 0x10]))
    elif damage == "truncate":
        os.truncate(path, offset + 5)
    else:
        os.remove(path)
    problems = verify_archive(run)
    # bit rot names the one checkpoint; a cut or lost shard file names every checkpoint it held (a cut
    # one also in one line for the file: its index no longer fits)
    assert len(problems) == {"flip": 1, "truncate": 6, "delete": 5}[damage], problems
    if damage == "truncate":
        assert any(p.startswith(f"shard file {path} of array 'blocks.0.attn.W_Q'") and "index" in p
                   and "steps 0, 10, 20, 30, 40;" in p for p in problems), problems
    problem = next(p for p in problems if "step 30" in p)
    assert "'blocks.0.attn.W_Q'" in problem and all("'blocks.0.attn.W_Q'" in p for p in problems)
    assert {"flip": "checksum", "truncate": "unreadable", "delete": "missing"}[damage] in problem
    r = open_archive(run)
    assert not r.verify_checksum(30) and r.verify_checksum(20) == (damage == "flip")
    if damage != "flip":  # a damaged chunk never reads as zeros
        with pytest.raises(StoreError, match=r"checkpoint at step 30 .* is damaged .*; check it with store.verify_archive"):
            r.load(30)
        with pytest.raises(StoreError, match=r"checkpoint at steps 20..40 .* is damaged"):
            r.load_block([20, 30, 40])


def test_verify_reports_commit_record_problems(tmp_path):
    run = _archive(tmp_path)
    steps = zarr.open_array(os.path.join(run, "checkpoints.zarr", "step"))
    steps[2] = -1  # slot 2 uncommitted, slots 3 and 4 still committed
    problems = verify_archive(run)
    assert any("step 30" in p and "after an uncommitted slot" in p for p in problems)
    assert open_archive(run).steps.tolist() == [0, 10]
    assert verify_archive(tmp_path / "nothing")[0].startswith("'")


def test_load_is_fast(tmp_path):
    specs = {f"blocks.{i}.w{j}": ((64, 64) if j == 0 else (64,), "float32") for i in range(10) for j in range(3)}
    w = ArchiveWriter(tmp_path / "r", specs)
    for s in range(3):
        w.write_checkpoint(s, {n: np.full(sh, s, d) for n, (sh, d) in specs.items()})
    r = open_archive(tmp_path / "r")
    r.load(1)
    t = time.perf_counter()
    for _ in range(10):
        out = r.load(1)
    per = (time.perf_counter() - t) / 10
    assert len(out) == 30 and out["blocks.3.w0"][0, 0] == 1
    assert per < 0.05, f"loading 30 leaves took {per * 1e3:.1f} ms"


# resume state -------------------------------------------------------------------------------

def test_resume_state_round_trip_is_bit_identical(tmp_path):
    nan_payload = np.array([np.nan, -0.0, 1e-45], np.float32)
    nan_payload.view(np.uint32)[0] = 0x7FC00123  # a NaN with a payload
    arrays = {
        "opt/mu/blocks.0.W": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        "count": np.array(7, np.int32),
        "key": np.array([0, 42], np.uint32),
        "odd": nan_payload,
        "f64": np.arange(3, dtype=np.float64) / 3,
        "flags": np.array([True, False]),
    }
    meta = {"data_position": 123, "rng": "philox", "nested": {"a": [1, 2]}}
    write_resume_state(tmp_path, 100, arrays, meta)
    got, got_meta = read_resume_state(tmp_path, 100)
    assert got_meta == meta and set(got) == set(arrays)
    for n, a in arrays.items():
        assert got[n].dtype == a.dtype and got[n].shape == a.shape and got[n].tobytes() == a.tobytes()
    assert os.listdir(tmp_path / "resume") == ["step_000000000100.npz"]


def test_resume_state_packs_arrays_and_still_reads_a_member_per_array(tmp_path):
    arrays = {"opt.mu.W": np.arange(12, dtype=np.float32).reshape(3, 4), "count": np.array(3, np.int32)}
    write_resume_state(tmp_path, 7, arrays, {"step": 7})
    with np.load(tmp_path / "resume" / "step_000000000007.npz") as npz:
        assert sorted(npz.files) == ["__data__", "__dtypes__", "__index__", "__meta__"]
    # the layout written by earlier versions: one npz member per array
    as_json = lambda obj: np.frombuffer(json.dumps(obj).encode(), np.uint8)  # noqa: E731
    np.savez(tmp_path / "resume" / "step_000000000009.npz", **arrays, __meta__=as_json({"step": 9}),
             __dtypes__=as_json({}))
    for step in (7, 9):
        got, meta = read_resume_state(tmp_path, step)
        assert meta == {"step": step} and sorted(got) == sorted(arrays)
        for name, value in arrays.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape
            assert np.array_equal(got[name], value)


def test_resume_bfloat16_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
    write_resume_state(tmp_path, 1, {"w": a}, {})
    got, _ = read_resume_state(tmp_path, 1)
    assert got["w"].dtype == a.dtype and got["w"].tobytes() == a.tobytes()


def test_resume_prune_and_errors(tmp_path):
    for s in (5, 10, 20, 40):
        write_resume_state(tmp_path, s, {"x": np.array([s])}, {"s": s})
    assert resume_steps(tmp_path) == [5, 10, 20, 40]
    assert prune_resume_states(tmp_path) == [5, 10]
    assert resume_steps(tmp_path) == [20, 40]
    assert read_resume_state(tmp_path, 40)[1] == {"s": 40}
    with pytest.raises(FileNotFoundError, match=r"no resume state for step 5 .*have: \[20, 40\]"):
        read_resume_state(tmp_path, 5)
    with pytest.raises(StoreError, match="not JSON-serializable"):
        write_resume_state(tmp_path, 50, {}, {"bad": object()})
    assert resume_steps(tmp_path) == [20, 40]


def test_store_remedies_are_said_in_the_library_words_or_the_command_lines(tmp_path):
    """The store words what to do without naming any command; the CLI says the same remedy with its
    commands and flags while it runs one. Both phrasebooks name the same remedies with the same fields."""
    import string

    from typer.testing import CliRunner

    from cli._remedies import CLI_WORDS
    from cli.app import app
    from store.remedies import LIBRARY_WORDS

    fields = lambda text: {f for _, f, _, _ in string.Formatter().parse(text) if f}  # noqa: E731
    assert set(CLI_WORDS) == set(LIBRARY_WORDS)
    for key, text in LIBRARY_WORDS.items():
        assert fields(CLI_WORDS[key]) <= fields(text) | {"run"}, key
        assert "`scalars " not in text and "--" not in text, key
    run = tmp_path / "empty"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"has no scalars.zarr; compute scalars for '.*empty' first"):
        store.open_scalars(run)
    r = CliRunner().invoke(app, ["show", str(run)])
    assert r.exit_code != 0 and f"run `scalars compute {run}` first" in r.output, r.output
    with pytest.raises(FileNotFoundError, match=r"compute scalars for '.*empty' first"):  # spoken only inside the command
        store.open_scalars(run)


def test_store_sources_name_no_command_line():
    """No string in store/ names a `scalars` command or a flag: the CLI's words live in cli/_remedies.py."""
    import ast
    import re

    bad = []
    for path in sorted((ROOT / "store").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if re.search(r"`scalars \w+|(?<![\w-])--[a-z]", node.value):
                    bad.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
    assert not bad, bad
