"""Cross-run queries: multi-run opens equal single-run opens, laziness at scale, scalars joined with metrics."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from store import (MetricsWriter, VariableSpec, align_with_metrics, ensure_variables, open_metrics, open_run,
                   open_scalars, write_cells, write_run_json)


def _spec(name, layers, heads, dims=("layer", "head")):
    coords = {"layer": np.arange(layers), "head": np.arange(heads)}
    return VariableSpec(name, dims, {d: coords[d] for d in dims}, {"probe_hash": "h", "units": "", "version": 1})


RUNS = {  # name: (layers, heads, seed, preset, seq_len, steps, written steps)
    "a": (2, 4, 0, "tiny", 32, np.arange(0, 100, 10), [0, 10, 50, 90]),
    "b": (3, 8, 1, "gpt2", 64, np.arange(0, 100, 10), [10, 20, 90]),
    "c": (2, 4, 2, "tiny", 32, np.arange(0, 60, 20), [0, 20, 40]),
}


def _make_runs(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    dirs = []
    for name, (layers, heads, seed, preset, seq_len, steps, written) in RUNS.items():
        run = str(tmp_path / f"run_{name}")
        write_run_json(run, {"config": {"preset": preset, "model": {"n_layers": layers, "n_heads": heads},
                                        "task": {"seq_len": seq_len}, "seeds": {"init_seed": seed}},
                             "model": {"n_layers": layers, "n_heads": heads},
                             # the short names its writer labels the run with (the store knows no config keys)
                             "coords": {"seed": seed, "n_layers": layers, "n_heads": heads, "preset": preset}})
        ensure_variables(run, [_spec("induction_score", layers, heads), _spec("loss", 0, 0, dims=())], steps)
        write_cells(run, "induction_score", written, rng.random((len(written), layers, heads)).astype(np.float32))
        write_cells(run, "loss", written[:2], rng.random(2).astype(np.float32))
        with MetricsWriter(run) as w:
            for s in range(int(steps[-1]) + 1):
                w.append(s, {"train_loss": 5.0 - s / 100 + seed, **({"eval_loss": float(s)} if s % 25 == 0 else {})})
        dirs.append(run)
    return dirs


def test_multi_run_open_with_differing_configs_equals_single_run_opens(tmp_path):
    dirs = _make_runs(tmp_path)
    multi = open_scalars(dirs)
    assert multi.run.values.tolist() == ["run_a", "run_b", "run_c"]
    assert multi.sizes == {"run": 3, "step": 10, "layer": 3, "head": 8}
    assert multi.seed.values.tolist() == [0, 1, 2] and multi.n_layers.values.tolist() == [2, 3, 2]
    assert multi.n_heads.values.tolist() == [4, 8, 4] and multi.preset.values.tolist() == ["tiny", "gpt2", "tiny"]
    assert multi["task.seq_len"].values.tolist() == [32, 64, 32]
    assert multi.induction_score.chunks is not None
    globbed = open_scalars(str(tmp_path / "run_*"))
    assert globbed.run.values.tolist() == multi.run.values.tolist()
    np.testing.assert_array_equal(globbed.induction_score.values, multi.induction_score.values)
    for run, label in zip(dirs, multi.run.values):
        single = open_scalars(run)
        part = multi.sel(run=label)
        for name in ("induction_score", "loss"):
            inside = part[name].sel({d: single[d] for d in single[name].dims})
            np.testing.assert_array_equal(inside.values, single[name].values)
            outside = part[name].values.size - inside.values.size
            assert np.isnan(part[name].values).sum() == np.isnan(single[name].values).sum() + outside
    # the recipe of the issue, checked against a loop over single-run opens
    per_seed = multi.induction_score.sel(layer=1).max("head").groupby("seed").mean()
    for run, seed in zip(dirs, (0, 1, 2)):
        expected = open_scalars(run).induction_score.sel(layer=1).max("head").mean().values.item()
        assert per_seed.sel(seed=seed).mean().values.item() == pytest.approx(expected, nan_ok=True)
    metrics = open_metrics(dirs)
    for run, label in zip(dirs, metrics.run.values):
        single = open_metrics(run)
        np.testing.assert_array_equal(metrics.train_loss.sel(run=label, step=single.step).values,
                                      single.train_loss.values)


def test_first_step_over_threshold_per_run(tmp_path):
    dirs = _make_runs(tmp_path)
    ds = open_scalars(dirs)
    formed = (ds.induction_score > 0.9).any(["layer", "head"])
    first = ds.step.where(formed).min("step")
    for run, label in zip(dirs, ds.run.values):
        values = open_scalars(run).induction_score.values
        hits = [s for s, v in zip(open_scalars(run).step.values, values) if np.nanmax(v, initial=-1) > 0.9]
        assert (np.isnan(first.sel(run=label).values.item()) if not hits else first.sel(run=label).values.item() == hits[0])


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # sees every attempt to open a file, chunk files that do not exist included


def test_lazy_open_of_1000_steps_12_layers_8_heads_20_types(tmp_path):
    global _OPENED
    run = str(tmp_path / "big")
    write_run_json(run, {"config": {"seed": 0}})
    steps = np.arange(1000) * 10
    names = [f"type_{i:02d}" for i in range(20)]
    ensure_variables(run, [_spec(n, 12, 8) for n in names], steps)
    rng = np.random.default_rng(0)
    full = rng.random((1000, 12, 8)).astype(np.float32)
    write_cells(run, names[0], steps, full)  # one type in full: 1000 chunks
    for n in names[1:]:
        write_cells(run, n, steps[::100], rng.random((10, 12, 8)).astype(np.float32))
    data = tuple(os.path.join(run, "scalars.zarr", n) + os.sep for n in names + [f"computed__{n}" for n in names])

    def chunk_reads() -> list[str]:  # chunks of types and their masks (the step/layer/head coords are read)
        return [p for p in _OPENED if p.startswith(data) and f"{os.sep}c{os.sep}" in p]
    _OPENED = []
    try:
        ds = open_scalars(run)
        two = open_scalars([run, run + os.sep])  # several runs (same store twice)
        query = ds[names[0]].sel(layer=3).max("head")
        cross = two[names[0]].sel(layer=3).max("head").mean("run")
        assert ds.sizes == {"step": 1000, "layer": 12, "head": 8} and len(ds.data_vars) == 20
        assert _OPENED and chunk_reads() == []  # metadata only, not one chunk (nor mask chunk)
        np.testing.assert_array_equal(query.values, full[:, 3].max(-1))
        assert len(chunk_reads()) >= 1000  # computing reads the chunks
        _OPENED = []
        np.testing.assert_array_equal(cross.values, full[:, 3].max(-1))
        assert chunk_reads()
    finally:
        _OPENED = None


def test_align_with_metrics_nearest_logged_step_smoothing_and_tolerance(tmp_path):
    run = str(tmp_path / "run")
    write_run_json(run, {"config": {"seed": 5}})
    steps = [0, 40, 125, 300, 302, 400]
    ensure_variables(run, [_spec("loss", 0, 0, dims=()), _spec("induction_score", 1, 2)], steps)
    write_cells(run, "loss", steps, np.arange(6, dtype=np.float32))
    with MetricsWriter(run) as w:
        for s in range(0, 301, 5):  # logged every 5 steps; evals every 100
            w.append(s, {"train_loss": float(s), "loss": -float(s), **({"eval_loss": s / 100} if s % 100 == 0 else {})})
    ds = open_run(run)
    # nearest logged step; 302 is within one logging interval of the last row, 400 is past the log
    np.testing.assert_array_equal(ds.train_loss.values, [0.0, 40.0, 125.0, 300.0, 300.0, np.nan])
    np.testing.assert_array_equal(ds.eval_loss.values, [0.0, 0.0, 1.0, 3.0, 3.0, 3.0])  # evals every 100 steps
    np.testing.assert_array_equal(ds.metric_loss.values[:4], [0.0, -40.0, -125.0, -300.0])  # 'loss' is a scalar
    assert ds.loss.values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and ds.induction_score.chunks is not None
    near = align_with_metrics(open_scalars(run), open_metrics(run), tolerance=20)
    assert np.isnan(near.eval_loss.values[[1, 2]]).all() and near.eval_loss.values[[0, 3]].tolist() == [0.0, 3.0]
    smooth = open_run(run, smooth=3)  # centred mean over 3 logged rows: s-5, s, s+5 (2 rows at the ends)
    np.testing.assert_array_equal(smooth.train_loss.values, [2.5, 40.0, 125.0, 297.5, 297.5, np.nan])
    assert smooth.train_loss.attrs["smooth"] == 3
    with pytest.raises(ValueError, match=r"smooth=0 must be a positive number of logged rows"):
        open_run(run, smooth=0)
    with pytest.raises(ValueError, match=r"both come from one run or both from several runs"):
        align_with_metrics(open_scalars([run]), open_metrics(run))


def test_open_run_over_several_runs_equals_single_run_open_run(tmp_path):
    dirs = _make_runs(tmp_path)
    many = open_run(str(tmp_path / "run_*"), smooth=4)
    assert many.seed.values.tolist() == [0, 1, 2]
    for run, label in zip(dirs, many.run.values):
        one = open_run(run, smooth=4)
        for name in ("train_loss", "eval_loss"):
            np.testing.assert_array_equal(many[name].sel(run=label, step=one.step).values, one[name].values)
        assert np.isnan(many.train_loss.sel(run=label).drop_sel(step=one.step.values).values).all()
    # a step-indexed loss per run, picked at each run's first checkpoint past 0.5 induction score
    formed = (many.induction_score > 0.5).any(["layer", "head"])
    first = many.step.where(formed).min("step")
    loss_there = many.train_loss.sel(step=first.fillna(0).astype(int)).where(first.notnull())
    for label in many.run.values:
        f = first.sel(run=label).values.item()
        if not np.isnan(f):
            assert loss_there.sel(run=label).values.item() == many.train_loss.sel(run=label, step=int(f)).values.item()
    assert isinstance(first.to_pandas(), pd.Series)
