"""`scalars export-scalars`: netCDF-4 and long CSV files that read back to the stored values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from cli.app import app
from store import VariableSpec, ensure_variables, export_scalars, open_scalars, write_cells, write_run_json

runner = CliRunner()


def _run(tmp_path, name, heads=2, seed=0):
    run = str(tmp_path / name)
    write_run_json(run, {"config": {"seeds": {"init_seed": seed}, "model": {"n_heads": heads}, "preset": "p",
                                    "flag": True}})
    coords = {"layer": np.arange(2), "head": np.arange(heads), "src_layer": np.arange(2), "src_head": np.arange(heads)}
    specs = [VariableSpec("induction_score", ("layer", "head"), {d: coords[d] for d in ("layer", "head")},
                          {"probe_hash": "x", "units": "attention probability", "version": "1"}),
             VariableSpec("loss", (), {}, {"probe_hash": "x", "units": "nats"}),
             VariableSpec("composition_k", ("layer", "head", "src_layer", "src_head"), coords, {"probe_hash": "x"})]
    ensure_variables(run, specs, [0, 10, 20])
    rng = np.random.default_rng(seed)
    write_cells(run, "induction_score", [0, 20], rng.random((2, 2, heads)).astype(np.float32) / 3)
    write_cells(run, "loss", [0, 10, 20], np.array([4.1, 3.3, 2.0000001], np.float32))
    write_cells(run, "composition_k", [10], rng.random((1, 2, heads, 2, heads)).astype(np.float32))
    return run


def test_netcdf_reads_back_equal(tmp_path):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["export-scalars", run, "--format", "netcdf", "-o", str(tmp_path / "s.nc")])
    assert r.exit_code == 0, r.output
    back = xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf").load()
    ds = open_scalars(run).load()
    for name in ds.data_vars:
        assert back[name].dims == ds[name].dims and back[name].dtype == ds[name].dtype
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    assert back.loss.attrs["units"] == "nats" and back.step.values.tolist() == [0, 10, 20]


def test_netcdf_of_several_runs_keeps_config_coords(tmp_path):
    runs = [_run(tmp_path, "a", heads=2, seed=1), _run(tmp_path, "b", heads=3, seed=2)]
    path = export_scalars(runs, tmp_path / "both.nc")
    back = xr.open_dataset(path, engine="h5netcdf").load()
    assert back.run.values.tolist() == ["a", "b"] and back.seed.values.tolist() == [1, 2]
    assert back.n_heads.values.tolist() == [2, 3] and back.sizes["head"] == 3
    np.testing.assert_array_equal(back.induction_score.values, open_scalars(runs).induction_score.values)


def test_csv_long_format_has_one_row_per_computed_cell(tmp_path):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["export-scalars", run, "--format", "csv"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "r" / "scalars.csv")
    assert list(table.columns) == ["step", "layer", "head", "src_layer", "src_head", "type", "value"]
    assert table.groupby("type").size().to_dict() == {"composition_k": 16, "induction_score": 8, "loss": 3}
    ds = open_scalars(run)
    for row in table.itertuples():
        where = {d: int(getattr(row, d)) for d in ds[row.type].dims if d != "step"}
        stored = ds[row.type].sel(step=row.step, **where).values
        assert np.float32(row.value) == stored  # %.9g round-trips float32 exactly
    loss = table[table.type == "loss"]
    assert loss[["layer", "head"]].isna().all().all() and loss.value.tolist()[2] == pytest.approx(2.0000001)


def test_csv_of_several_runs_has_a_run_column(tmp_path):
    runs = [_run(tmp_path, "a", heads=2, seed=1), _run(tmp_path, "b", heads=3, seed=2)]
    path = export_scalars(runs, tmp_path / "both.csv")
    table = pd.read_csv(path)
    assert list(table.columns)[:2] == ["run", "step"] and set(table.run) == {"a", "b"}
    assert len(table[(table.run == "b") & (table.type == "induction_score")]) == 12  # padded heads are dropped


def test_export_scalars_errors(tmp_path):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["export-scalars", run, "--format", "parquet", "-o", str(tmp_path / "x.pq")])
    assert r.exit_code == 2 and "format 'parquet' is not supported; use one of netcdf, csv" in r.output
    r = runner.invoke(app, ["export-scalars", run])
    assert r.exit_code == 2 and "pass --format netcdf or --format csv" in r.output
    r = runner.invoke(app, ["export-scalars", run, "-o", str(tmp_path / "no" / "x.csv")])
    assert r.exit_code == 2 and "does not exist; create it first" in r.output
    r = runner.invoke(app, ["export-scalars", str(tmp_path / "missing"), "--format", "csv"])
    assert r.exit_code == 2 and "has no scalars.zarr" in r.output
    with pytest.raises(ValueError, match="several runs need an output file"):
        export_scalars([run, run], fmt="csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_csv_tells_a_computed_nan_from_a_missing_cell_and_filters_by_type(tmp_path):
    run = _run(tmp_path, "r")
    write_cells(run, "loss", [10], np.array([np.nan], np.float32))  # computed, and NaN (e.g. a pair that does not separate)
    r = runner.invoke(app, ["export-scalars", run, "--format", "csv", "--type", "loss", "--type", "induction_score",
                            "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "x.csv").read_text().splitlines()
    table = pd.read_csv(tmp_path / "x.csv", keep_default_na=False)
    assert set(table.type) == {"loss", "induction_score"}  # filtered
    loss = table[table.type == "loss"]
    assert loss.step.tolist() == [0, 10, 20] and loss.value.tolist()[1] == "NaN"  # computed NaN: a row saying NaN
    ind = table[table.type == "induction_score"]
    assert sorted(set(ind.step)) == [0, 20]  # step 10 was never computed: no rows at all
    assert all(line.split(",")[1] in ("", "0", "1") for line in text[1:] if ",induction_score," in line)  # ints
    r = runner.invoke(app, ["export-scalars", run, "--format", "csv", "--type", "nope", "-o", str(tmp_path / "y.csv")])
    assert r.exit_code == 2 and "scalar 'nope' is not stored" in r.output and not (tmp_path / "y.csv").exists()
