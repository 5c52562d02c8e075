"""Scalar store: ensure/write/read cells, masks, growth, schema errors, concurrency, laziness, verify."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import numpy as np
import pytest
import zarr

import store
from store import (StoreError, VariableSpec, computed_mask, ensure_variables, missing_steps, open_scalars,
                   verify_scalars, write_cells, write_run_json)

STEPS = np.arange(0, 100, 10)


def _spec(name="induction_score", layers=2, heads=4, probe_hash="abc", dims=("layer", "head"), **attrs):
    coords = {"layer": np.arange(layers), "head": np.arange(heads)}
    return VariableSpec(name, dims, {d: coords[d] for d in dims},
                        {"probe_hash": probe_hash, "description": "d", "units": "", "version": 1, **attrs})


def _value(step: int, layers: int = 2, heads: int = 4) -> np.ndarray:
    return (step + np.arange(layers * heads).reshape(layers, heads) / 100).astype(np.float32)


def _run(tmp_path, name="run", heads=4, seed=0) -> str:
    run = str(tmp_path / name)
    write_run_json(run, {"config": {"model": {"n_layers": 2, "n_heads": heads, "d_model": 64}, "init_seed": seed,
                                    "preset": "tiny", "lr": 0.001, "tags": ["x"]}})
    return run


def test_ensure_write_read_and_mask(tmp_path):
    run = _run(tmp_path)
    ensure_variables(run, [_spec(), _spec("loss", dims=())], STEPS)
    assert not computed_mask(run, "induction_score").any()
    write_cells(run, "induction_score", [30, 40, 10], np.stack([_value(30), _value(40), _value(10)]))
    write_cells(run, "loss", [20], np.array([np.nan]))  # NaN values are legal cells
    assert computed_mask(run, "induction_score").tolist() == [s in (10, 30, 40) for s in STEPS]
    assert computed_mask(run, "loss").tolist() == [s == 20 for s in STEPS]
    assert missing_steps(run, "induction_score", [0, 10, 30, 200]).tolist() == [0, 200]
    assert missing_steps(run, "other", [0, 10]).tolist() == [0, 10]
    ds = open_scalars(run)
    assert set(ds.data_vars) == {"induction_score", "loss"}
    assert ds.induction_score.dims == ("step", "layer", "head") and ds.induction_score.dtype == np.float32
    assert ds.induction_score.attrs["probe_hash"] == "abc"
    np.testing.assert_array_equal(ds.induction_score.sel(step=30).values, _value(30))
    assert np.isnan(ds.induction_score.sel(step=20).values).all()
    masks = open_scalars(run, with_masks=True)
    assert masks.computed__loss.dtype == bool and masks.computed__loss.values.tolist() == [s == 20 for s in STEPS]


def test_write_errors(tmp_path):
    run = _run(tmp_path)
    ensure_variables(run, [_spec()], STEPS)
    with pytest.raises(StoreError, match=r"have shape \(1, 4, 2\), expected \(1, 2, 4\)"):
        write_cells(run, "induction_score", [10], np.zeros((1, 4, 2)))
    with pytest.raises(StoreError, match=r"steps \[15\] are not on the step axis"):
        write_cells(run, "induction_score", [15], np.zeros((1, 2, 4)))
    with pytest.raises(KeyError, match=r"scalar 'nope' is not in"):
        write_cells(run, "nope", [10], np.zeros((1, 2, 4)))
    with pytest.raises(FileNotFoundError, match=r"has no scalars.zarr"):
        write_cells(str(tmp_path), "x", [0], np.zeros(1))
    assert not computed_mask(run, "induction_score").any()


def test_float64_and_string_coords(tmp_path):
    run = _run(tmp_path)
    spec = VariableSpec("side_score", ("side",), {"side": np.array(["q", "k"])}, {"probe_hash": "p"}, dtype="float64")
    ensure_variables(run, [spec], STEPS)
    write_cells(run, "side_score", [0], np.array([[1 / 3, 2 / 3]]))
    ds = open_scalars(run)
    assert ds.side_score.dtype == np.float64 and ds.side.values.tolist() == ["q", "k"]
    assert ds.side_score.sel(step=0, side="k").values.item() == 2 / 3


def test_incremental_step_growth(tmp_path):
    run = _run(tmp_path)
    ensure_variables(run, [_spec()], STEPS[:5])
    write_cells(run, "induction_score", [0, 40], np.stack([_value(0), _value(40)]))
    ensure_variables(run, [_spec()], STEPS)  # grows the step axis; computed cells stay
    ensure_variables(run, [_spec()], STEPS[:3])  # a subset changes nothing
    assert store.stored_steps(run).tolist() == STEPS.tolist()
    assert computed_mask(run, "induction_score").tolist() == [s in (0, 40) for s in STEPS]
    write_cells(run, "induction_score", [90], _value(90)[None])
    ds = open_scalars(run)
    np.testing.assert_array_equal(ds.induction_score.sel(step=[0, 40, 90]).values,
                                  np.stack([_value(0), _value(40), _value(90)]))
    with pytest.raises(StoreError, match=r"steps \[5\] fall between steps already in scalars.zarr"):
        ensure_variables(run, [_spec()], [5, 200])
    assert store.stored_steps(run).tolist() == STEPS.tolist()


def test_schema_mismatch_errors_and_force(tmp_path):
    run = _run(tmp_path)
    ensure_variables(run, [_spec()], STEPS)
    write_cells(run, "induction_score", [10], _value(10)[None])
    with pytest.raises(StoreError, match=r"scalar 'induction_score' is stored with dims \(step, layer, head\), "
                                         r"got \(step, layer\); recompute it with force=True, or store it under another name"):
        ensure_variables(run, [_spec(dims=("layer",))], STEPS)
    with pytest.raises(StoreError, match=r"stored with dims \(step, layer: 2, head: 4\), "
                                         r"got \(step, layer: 2, head: 8\)"):
        ensure_variables(run, [_spec(heads=8)], STEPS)
    with pytest.raises(StoreError, match=r"computed on another probe \(probe hash 'abc', now 'zzz'\); recompute it "
                                         r"with force=True \(at every step you want it at\), or pass the probe they were "
                                         r"computed on as probe="):
        ensure_variables(run, [_spec(probe_hash="zzz")], STEPS)
    assert computed_mask(run, "induction_score").sum() == 1  # errors changed nothing
    # force: the changed definition is staged; the stored cells stay until the staged copy is committed
    targets = ensure_variables(run, [_spec(probe_hash="zzz")], STEPS, force=True)
    assert targets["induction_score"] != "induction_score"
    assert computed_mask(run, "induction_score").sum() == 1
    assert store.commit_replacements(run, targets) == {"induction_score": 1}  # one old cell dropped
    assert not computed_mask(run, "induction_score").any()
    ds = open_scalars(run, computed_only=False)
    assert ds.induction_score.attrs["probe_hash"] == "zzz" and np.isnan(ds.induction_score.values).all()
    targets = ensure_variables(run, [_spec(dims=("layer",))], STEPS, force=True)  # force may change dims too
    store.commit_replacements(run, targets)
    assert open_scalars(run).induction_score.dims == ("step", "layer")
    # force on an unchanged definition keeps every cell: the caller overwrites the ones it recomputes
    write_cells(run, "induction_score", [10, 20], np.ones((2, 2)))
    assert ensure_variables(run, [_spec(dims=("layer",))], STEPS, force=True) == {"induction_score": "induction_score"}
    assert computed_mask(run, "induction_score").sum() == 2


def test_bad_specs():
    with pytest.raises(StoreError, match="needs one coord array per dim"):
        VariableSpec("x", ("layer",), {}, {})
    with pytest.raises(StoreError, match="must start with a letter"):
        VariableSpec("computed__x", (), {}, {})
    with pytest.raises(StoreError, match="not JSON-serializable"):
        VariableSpec("x", (), {}, {"bad": object()})


def test_computed_only_hides_cells_without_mask(tmp_path):
    run = _run(tmp_path)
    ensure_variables(run, [_spec()], STEPS)
    arr = zarr.open_array(os.path.join(run, "scalars.zarr", "induction_score"))
    arr[5] = _value(50)  # a value chunk written, crash before its mask: not a real cell
    assert np.isnan(open_scalars(run).induction_score.sel(step=50).values).all()
    raw = open_scalars(run, computed_only=False)
    np.testing.assert_array_equal(raw.induction_score.sel(step=50).values, _value(50))


def _writer(run: str, steps: list[int], seed: int, batch: int, barrier) -> None:
    barrier.wait()  # both processes create the store and write at the same time
    ensure_variables(run, [_spec()], STEPS.tolist() + list(range(100, 400, 10)))
    rng = np.random.default_rng(seed)
    for _ in range(3):
        order = rng.permutation(steps)
        for i in range(0, len(order), batch):
            chunk = [int(s) for s in order[i:i + batch]]
            write_cells(run, "induction_score", chunk, np.stack([_value(s) for s in chunk]))


def test_two_processes_write_overlapping_cells(tmp_path):
    run = _run(tmp_path)
    all_steps = list(range(0, 400, 10))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(run, all_steps[:28], 1, 1, barrier)),
             ctx.Process(target=_writer, args=(run, all_steps[12:], 2, 3, barrier))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert computed_mask(run, "induction_score").all()
    ds = open_scalars(run)
    assert ds.step.values.tolist() == all_steps
    np.testing.assert_array_equal(ds.induction_score.values, np.stack([_value(s) for s in all_steps]))
    assert verify_scalars(run) == []


def test_open_scalars_multi_run_pads_and_carries_config(tmp_path):
    for i, heads in enumerate((4, 8)):
        run = _run(tmp_path, f"run{i}", heads=heads, seed=10 + i)
        ensure_variables(run, [_spec(heads=heads)], STEPS if i == 0 else STEPS[:5])
        write_cells(run, "induction_score", [10], _value(10, heads=heads)[None])
    ds = open_scalars(str(tmp_path / "run*"))
    assert ds.sizes == {"run": 2, "step": 10, "layer": 2, "head": 8}
    assert ds.run.values.tolist() == ["run0", "run1"]
    assert ds.seed.values.tolist() == [10, 11] and ds.n_heads.values.tolist() == [4, 8]
    assert ds.n_layers.values.tolist() == [2, 2] and ds.d_model.values.tolist() == [64, 64]
    assert ds.preset.values.tolist() == ["tiny", "tiny"] and "model.n_heads" in ds.coords and "tags" not in ds.coords
    assert ds.induction_score.chunks is not None  # still lazy
    v = ds.induction_score.sel(step=10).values
    np.testing.assert_array_equal(v[0, :, :4], _value(10))
    assert np.isnan(v[0, :, 4:]).all() and np.array_equal(v[1], _value(10, heads=8))
    assert np.isnan(ds.induction_score.sel(run="run1", step=90).values).all()  # run1 has fewer steps
    per_seed = ds.induction_score.sel(layer=1, step=10).max("head").groupby("seed").max()
    assert per_seed.values.tolist() == pytest.approx([10.07, 10.15])
    same = open_scalars([tmp_path / "run0", tmp_path / "run1"])
    assert same.run.values.tolist() == ["run0", "run1"]
    with pytest.raises(StoreError, match=r"no run directories match '.*nope\*'; check the path or quote the glob"):
        open_scalars(str(tmp_path / "nope*"))


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # sees every file open, whichever code path reads a chunk


def test_open_scalars_reads_no_chunk_data(tmp_path):
    global _OPENED
    run = _run(tmp_path)
    ensure_variables(run, [_spec(), _spec("loss", dims=())], STEPS)
    write_cells(run, "induction_score", STEPS, np.stack([_value(s) for s in STEPS]))
    data = [os.path.join(run, "scalars.zarr", v) + os.sep for v in ("induction_score", "loss", "computed__")]

    def data_reads() -> list[str]:
        return [p for p in _OPENED if p.startswith(tuple(data)) and f"{os.sep}c{os.sep}" in p]
    _OPENED = []
    try:
        ds = open_scalars(run, with_masks=True)
        one = open_scalars([run])
        sliced = ds.induction_score.sel(layer=1).max("head")
        assert _OPENED and not data_reads(), data_reads()  # metadata was read, no data chunk
        assert ds.induction_score.chunks[0] == (10,) and one.induction_score.chunks is not None
        assert sliced.values.tolist() == pytest.approx([s + 0.07 for s in STEPS])
        assert data_reads()  # computing does read chunks
    finally:
        _OPENED = None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_scalars_reports_damaged_chunk(tmp_path, damage):
    run = _run(tmp_path)
    ensure_variables(run, [_spec()], STEPS)
    write_cells(run, "induction_score", STEPS, np.stack([_value(s) for s in STEPS]))
    assert verify_scalars(run) == []
    path = os.path.join(run, "scalars.zarr", "induction_score", "c", "3", "0", "0")  # step 30
    if damage == "flip":
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 2] ^= 0x01
        open(path, "wb").write(bytes(raw))
    elif damage == "truncate":
        os.truncate(path, 3)
    else:
        os.remove(path)
    problems = verify_scalars(run)
    assert len(problems) == 1 and "scalar 'induction_score' at step 30" in problems[0], problems
    assert ("missing" if damage == "delete" else "unreadable") in problems[0]
    store.clear_cells(run, "induction_score", [30])  # the suggested repair
    assert verify_scalars(run) == [] and missing_steps(run, "induction_score", STEPS).tolist() == [30]
