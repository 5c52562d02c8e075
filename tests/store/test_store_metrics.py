"""Metrics store: buffered rows, growth, new metrics, truncation and the n_rows commit record."""

from __future__ import annotations

import numpy as np
import pytest

from store import MetricsWriter, StoreError, open_metrics, write_run_json


def test_append_flush_open(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.append(0, {"loss": 3.0, "acc": 0.1})
        w.append(5, {"loss": np.float32(2.5)})  # acc missing in this row
        w.flush()
        w.append(10, {"loss": 2.0, "acc": 0.5, "eval/icl": 0.2})  # a new metric appears
    ds = open_metrics(tmp_path)
    assert ds.step.values.tolist() == [0, 5, 10]
    assert ds.loss.values.tolist() == [3.0, 2.5, 2.0] and ds.loss.dtype == np.float64
    assert np.isnan(ds.acc.values[1]) and ds.acc.values[2] == 0.5
    assert np.isnan(ds["eval/icl"].values[:2]).all() and ds["eval/icl"].values[2] == 0.2


def test_growth_past_capacity(tmp_path):
    w = MetricsWriter(tmp_path)
    for block in range(3):
        for i in range(500):
            s = block * 500 + i
            w.append(s, {"loss": s / 10})
        w.flush()
    ds = open_metrics(tmp_path)
    assert ds.sizes["step"] == 1500 and np.array_equal(ds.loss.values, np.arange(1500) / 10)


def test_steps_strictly_increasing_and_truncate(tmp_path):
    w = MetricsWriter(tmp_path)
    for s in (0, 10, 20, 30):
        w.append(s, {"loss": float(s)})
    w.flush()
    with pytest.raises(StoreError, match=r"metrics step 30 is not after the last logged step 30"):
        w.append(30, {"loss": 1.0})
    w.append(40, {"loss": 40.0})  # buffered, dropped by the truncate below
    assert w.truncate_after(15) == 2
    with pytest.raises(StoreError, match=r"step 10 is not after the last logged step 10"):
        w.append(10, {"loss": 1.0})
    w.append(20, {"acc": 0.5})  # rewritten row: the old loss at step 20 must not come back
    w.flush()
    ds = open_metrics(tmp_path)
    assert ds.step.values.tolist() == [0, 10, 20]
    assert np.isnan(ds.loss.values[2]) and ds.acc.values[2] == 0.5
    w2 = MetricsWriter(tmp_path)  # reopened writers continue after the committed rows
    with pytest.raises(StoreError, match="not after the last logged step 20"):
        w2.append(20, {"loss": 0.0})


def test_crash_before_commit_hides_rows(tmp_path, monkeypatch):
    w = MetricsWriter(tmp_path)
    w.append(0, {"loss": 1.0})
    w.flush()
    w.append(1, {"loss": 0.5, "new": 1.0})

    def crash(self, n):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(MetricsWriter, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        w.flush()
    monkeypatch.undo()
    ds = open_metrics(tmp_path)
    assert ds.step.values.tolist() == [0] and ds.loss.values.tolist() == [1.0]
    w = MetricsWriter(tmp_path)
    assert w.n_rows == 1
    w.append(1, {"loss": 0.25})
    w.flush()
    ds = open_metrics(tmp_path)
    assert ds.loss.values.tolist() == [1.0, 0.25] and np.isnan(ds["new"].values).all()


def test_open_metrics_multi_run(tmp_path):
    for i, n in enumerate((2, 3)):
        run = tmp_path / f"seed{i}"
        write_run_json(run, {"config": {"init_seed": i}})
        with MetricsWriter(run) as w:
            for s in range(n):
                w.append(s * 10, {"loss": float(i + s)})
    ds = open_metrics(str(tmp_path / "seed*"))
    assert ds.run.values.tolist() == ["seed0", "seed1"] and ds.seed.values.tolist() == [0, 1]
    assert ds.loss.shape == (2, 3) and np.isnan(ds.loss.values[0, 2])
    with pytest.raises(StoreError, match=r"no run directories match '.*nope\*'; check the path or quote the glob"):
        open_metrics(str(tmp_path / "nope*"))
    with pytest.raises(FileNotFoundError, match=r"has no metrics.zarr"):
        open_metrics(tmp_path)
