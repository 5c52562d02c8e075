"""The engine's streaming loop: programs reused across runs, background writes, one read per block."""

import numpy as np
import pytest

import store
import scalars
from scalars.engine import PROGRAM_CACHE

SUITE = ["prev_token_score", "induction_score", "ablated_loss"]


def stored(run, name):
    return store.open_scalars(run)[name].values


def test_one_program_for_runs_of_one_architecture(tiny_run, copy_run):
    PROGRAM_CACHE.clear()
    before = PROGRAM_CACHE.builds
    a, b = copy_run(tiny_run, "a"), copy_run(tiny_run, "b")
    first = scalars.compute(a, SUITE, block_size=1)[0]
    second = scalars.compute(b, SUITE, block_size=1)[0]
    assert PROGRAM_CACHE.builds - before == 1, "the second run of the same architecture reuses the compiled program"
    assert first.checkpoints_computed == second.checkpoints_computed == 7
    assert second.traces == 1  # still the one trace, over both runs' 14 checkpoints
    for name in SUITE:
        np.testing.assert_array_equal(stored(a, name), stored(b, name))
    scalars.compute(b, ["loss"], block_size=1)  # another set of types: a program of its own
    assert PROGRAM_CACHE.builds - before == 2


def test_a_failed_write_surfaces_and_leaves_whole_cells(tiny_run, copy_run):
    reference = copy_run(tiny_run, "reference")
    scalars.compute(reference, SUITE, block_size=1)
    run = copy_run(tiny_run, "broken_disk")
    calls = []
    real = store.write_cells

    def failing(run_dir, name, steps, values):
        calls.append(name)
        if len(calls) > 3:
            raise OSError("No space left on device")
        real(run_dir, name, steps, values)

    with pytest.raises(OSError, match="No space left"):
        scalars.compute(run, SUITE, block_size=1, write_cells=failing)
    for name in SUITE:  # a cell marked computed holds its final value; the rest are NaN
        mask = store.computed_mask(run, name)
        np.testing.assert_array_equal(stored(run, name)[mask], stored(reference, name)[mask])
        assert np.isnan(stored(run, name)[~mask]).all()
    assert sum(store.computed_mask(run, n).sum() for n in SUITE) >= 1
    rerun = scalars.compute(run, SUITE, block_size=1)[0]
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
    report = scalars.compute(run, SUITE, block_size=4)[0]
    assert report.checkpoints_computed == 7 and not report.failed_steps
    assert sorted(s for r in reads for s in r) == sorted(store.open_archive(run).steps.tolist())
