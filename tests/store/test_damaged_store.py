"""A damaged scalar store is never read as valid: for each kind of damage `verify` names it, `compute`
repairs what it can or refuses in one sentence, and `show`, `export-scalars` and `open_scalars` never
present a fill value as data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests._marks import slow_except

import store
import scalars

VAR = "induction_score"


@pytest.fixture(scope="module")
def computed_run(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock-*"))
    scalars.compute(run, [VAR, "prev_token_score"])
    return run


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"}, timeout=300)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def chunk(run: Path, slot: int) -> Path:
    return run / "scalars.zarr" / VAR / "c" / str(slot) / "0" / "0"


def damage(run: Path, kind: str) -> None:
    root = run / "scalars.zarr"
    if kind == "missing_chunk":
        chunk(run, 2).unlink()
    elif kind == "truncated_chunk":
        with open(chunk(run, 2), "r+b") as f:
            f.truncate(5)
    elif kind == "flipped_byte":
        raw = bytearray(chunk(run, 2).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk(run, 2).write_bytes(bytes(raw))
    elif kind == "truncated_metadata":
        with open(root / VAR / "zarr.json", "r+b") as f:
            f.truncate(20)
    elif kind == "missing_mask":
        shutil.rmtree(root / f"computed__{VAR}")
    elif kind == "missing_step_axis":
        shutil.rmtree(root / "step")


@pytest.mark.parametrize("kind", slow_except(["missing_chunk", "truncated_chunk", "flipped_byte"], ['flipped_byte']))
def test_a_damaged_cell_is_named_and_never_shown_as_data(kind, computed_run, copy_run):
    run = copy_run(computed_run)
    good = store.open_scalars(run)[VAR].values
    damage(run, kind)
    problems = store.verify_scalars(run)
    assert len(problems) == 1 and f"scalar '{VAR}' at step 20" in problems[0], problems
    for argv in (["show", str(run), "--type", VAR, "--step", "20"],
                 ["export-scalars", str(run), "--format", "csv", "-o", str(run.parent / "x.csv")]):
        line = one_error_line(cli(*argv))
        assert f"scalar '{VAR}' at step 20" in line and "marked computed but its value chunk is" in line, line
    assert not (run.parent / "x.csv").exists()
    with pytest.raises(store.StoreError, match=f"scalar '{VAR}' at step 20"):
        store.open_scalars(run)[VAR].load()
    np.testing.assert_array_equal(store.open_scalars(run).prev_token_score.values.shape[0], good.shape[0])
    if kind == "missing_chunk":  # compute sees the cell as missing and recomputes it
        assert store.missing_steps(run, VAR, [0, 10, 20, 30]).tolist() == [20]
        assert scalars.compute(run, [VAR])[0].cells_computed == 1
    else:  # the message says how to recompute one damaged cell
        res = cli("compute", str(run), "--type", VAR, "--steps", "20", "--force", "-q")
        assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(store.open_scalars(run)[VAR].values, good)
    assert store.verify_scalars(run) == []


def test_truncated_metadata_names_the_file(computed_run, copy_run):
    run = copy_run(computed_run)
    damage(run, "truncated_metadata")
    path = str(run / "scalars.zarr" / VAR / "zarr.json")
    problems = store.verify_scalars(run)
    assert len(problems) == 1 and path in problems[0] and "damaged" in problems[0], problems
    for argv in (["show", str(run), "--type", "prev_token_score", "--step", "20"],
                 ["compute", str(run), "--type", VAR], ["verify", str(run)]):
        res = cli(*argv)
        assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr
        assert path in res.stdout + res.stderr and len((res.stdout + res.stderr).strip().splitlines()) <= 2


def test_a_missing_mask_reads_as_uncomputed_and_compute_repairs_it(computed_run, copy_run):
    run = copy_run(computed_run)
    good = store.open_scalars(run)[VAR].values
    damage(run, "missing_mask")
    assert any("no computed mask" in p for p in store.verify_scalars(run))
    assert np.isnan(store.open_scalars(run)[VAR].values).all()  # nothing shown as computed
    assert scalars.compute(run, [VAR])[0].cells_computed == good.shape[0]
    np.testing.assert_array_equal(store.open_scalars(run)[VAR].values, good)
    assert store.verify_scalars(run) == []


def test_a_missing_step_axis_is_refused_in_one_sentence(computed_run, copy_run):
    run = copy_run(computed_run)
    damage(run, "missing_step_axis")
    assert store.verify_scalars(run)
    for argv in (["show", str(run), "--type", VAR, "--step", "20"], ["compute", str(run), "--type", VAR]):
        assert "has no step coordinate" in one_error_line(cli(*argv))


def test_temporary_files_a_killed_compute_left_are_noted_then_removed(computed_run, copy_run):
    run = copy_run(computed_run)
    stale = run / "scalars.zarr" / VAR / "c" / "1" / "0" / f"0.{'a' * 32}.partial"
    stale.write_bytes(b"half a chunk")
    old = stale.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    fresh = stale.with_name(f"0.{'b' * 32}.partial")  # another compute's write in progress: kept
    fresh.write_bytes(b"in flight")
    notes: list[str] = []
    assert store.verify_scalars(run, notes) == []
    assert any(str(stale) in n and "killed writer" in n for n in notes)
    scalars.compute(run, [VAR], steps="0")  # the next writer
    assert not stale.exists() and fresh.exists()
