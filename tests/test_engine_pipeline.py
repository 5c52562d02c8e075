"""The engine's streaming loop: programs reused across runs, background writes, one read per block."""

import numpy as np
import pytest

import store
from scalars import _engine, compute_run

SUITE = ["prev_token_score", "induction_score", "ablated_loss"]


def stored(run, name):
    return store.open_scalars(run)[name].values


def test_one_program_for_runs_of_one_architecture(tiny_run, copy_run, monkeypatch):
    built = []

    class Counting(_engine.ComputeFn):
        def __init__(self, *args, **kwargs):
            built.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(_engine, "ComputeFn", Counting)
    monkeypatch.setattr(_engine, "_PROGRAMS", {})
    a, b = copy_run(tiny_run, "a"), copy_run(tiny_run, "b")
    first = compute_run(a, SUITE, block_size=1)
    second = compute_run(b, SUITE, block_size=1)
    assert len(built) == 1, "the second run of the same architecture reuses the compiled program"
    assert first.checkpoints_computed == second.checkpoints_computed == 7
    assert second.traces == 1  # still the one trace, over both runs' 14 checkpoints
    for name in SUITE:
        np.testing.assert_array_equal(stored(a, name), stored(b, name))
    compute_run(b, ["loss"], block_size=1)  # another set of types: a program of its own
    assert len(built) == 2


def test_a_failed_write_surfaces_and_leaves_whole_cells(tiny_run, copy_run, monkeypatch):
    reference = copy_run(tiny_run, "reference")
    compute_run(reference, SUITE, block_size=1)
    run = copy_run(tiny_run, "broken_disk")
    calls = []
    real = store.write_cells

    def failing(run_dir, name, steps, values):
        calls.append(name)
        if len(calls) > 3:
            raise OSError("No space left on device")
        real(run_dir, name, steps, values)

    monkeypatch.setattr(_engine.store, "write_cells", failing)
    with pytest.raises(OSError, match="No space left"):
        compute_run(run, SUITE, block_size=1)
    monkeypatch.setattr(_engine.store, "write_cells", real)
    for name in SUITE:  # a cell marked computed holds its final value; the rest are NaN
        mask = store.computed_mask(run, name)
        np.testing.assert_array_equal(stored(run, name)[mask], stored(reference, name)[mask])
        assert np.isnan(stored(run, name)[~mask]).all()
    assert sum(store.computed_mask(run, n).sum() for n in SUITE) >= 1
    rerun = compute_run(run, SUITE, block_size=1)
    assert rerun.cells_computed > 0
    for name in SUITE:
        np.testing.assert_array_equal(stored(run, name), stored(reference, name))


def test_a_block_is_read_once(tiny_run, copy_run, monkeypatch):
    run = copy_run(tiny_run)
    reads = []
    real = store.ArchiveReader.load_block

    def counting(self, steps):
        reads.append(list(steps))
        return real(self, steps)

    monkeypatch.setattr(store.ArchiveReader, "load_block", counting)
    monkeypatch.setattr(store.ArchiveReader, "verify_checksum", lambda self, step: pytest.fail("re-read"))
    report = compute_run(run, SUITE, block_size=4)
    assert report.checkpoints_computed == 7 and not report.failed_steps
    assert sorted(s for r in reads for s in r) == sorted(store.open_archive(run).steps.tolist())
