"""Training metrics ``RUN_DIR/metrics.zarr``: float64 columns over logged steps, rows committed by ``n_rows``.

Layout: ``step`` (capacity,) int64; ``m/<key>`` (capacity,) float64, NaN fill, one per metric
(true name in attrs); ``n_rows`` (1,) int64, written last in each flush. Rows past ``n_rows``
are invisible, so a crash mid-flush hides the partial rows. One writer (the trainer) at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from . import _zarr_io as zio
from ._names import check_name, safe_key
from ._runs import concat_runs, resolve_runs
from .dims import STEP
from .errors import StoreError
from .remedies import remedy

__all__ = ["METRICS", "MetricsWriter", "open_metrics"]

METRICS = "metrics.zarr"
_CHUNK = 512


def _root(run_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(run_dir), METRICS)


def _columns(group: Any) -> dict[str, Any]:
    return {zio.attrs(a).get("metric_name", k): a for k, a in zio.list_arrays(group, "m").items()}


def _n_rows(group: Any) -> int:
    return int(np.asarray(zio.get_array(group, "n_rows")[:])[0])


class MetricsWriter:
    """Buffers ``append(step, values)`` rows and writes them on ``flush()`` (and on context exit)."""

    def __init__(self, run_dir: str | os.PathLike[str],
                 describe: Callable[[str], Mapping[str, str]] | None = None) -> None:
        """`describe(name)` gives a new column's attrs (e.g. units and description)."""
        self.describe = describe
        self.root = _root(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        self._group = zio.open_group(self.root, "a")
        if zio.get_array(self._group, "n_rows") is None:
            for name, dtype, fill in ((STEP, "int64", -1),):
                zio.create_array(self._group, name, shape=(_CHUNK,), chunks=(_CHUNK,), dtype=dtype,
                                 fill_value=fill, dimension_names=(STEP,), overwrite=True)
            self._group.require_group("m")
            zio.create_array(self._group, "n_rows", shape=(1,), chunks=(1,), dtype="int64", fill_value=0,
                             overwrite=True)
            self._group.attrs.update({"kind": "metrics"})
        self._step_arr = zio.get_array(self._group, STEP)
        self._n_arr = zio.get_array(self._group, "n_rows")
        self._cols = _columns(self._group)
        self._n = _n_rows(self._group)
        self._last = int(self._step_arr[self._n - 1]) if self._n else None
        self._buffer: list[tuple[int, dict[str, float]]] = []

    @property
    def n_rows(self) -> int:
        """Committed rows (not counting buffered ones)."""
        return self._n

    @property
    def last_committed_step(self) -> int | None:
        """Step of the last committed row (None when there is none)."""
        return self._last

    def buffered_rows(self) -> list[tuple[int, dict[str, float]]]:
        """Copies of the rows appended since the last flush, oldest first."""
        return [(s, dict(r)) for s, r in self._buffer]

    def append(self, step: int, values: Mapping[str, Any]) -> None:
        """Buffer one row; ``step`` must exceed every earlier row's step."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise StoreError(f"metrics step {step!r} must be an integer")
        step = int(step)
        last = self._buffer[-1][0] if self._buffer else self._last
        if last is not None and step <= last:
            raise StoreError(f"metrics step {step} is not after the last logged step {last}; log rows with "
                             "strictly increasing steps (truncate_after to rewrite)")
        row = {}
        for name, value in values.items():
            try:
                row[check_name(name, "metric")] = float(value)
            except (TypeError, ValueError):
                raise StoreError(f"metric '{name}' at step {step} is {value!r}, not a number; log floats") from None
        self._buffer.append((step, row))

    def _ensure_capacity(self, need: int) -> None:
        cap = self._step_arr.shape[0]
        if need <= cap:
            return
        cap = max(2 * cap, -(-need // _CHUNK) * _CHUNK)
        for arr in self._cols.values():
            zio.resize(arr, (cap,))
        zio.resize(self._step_arr, (cap,))

    def flush(self) -> None:
        """Write buffered rows, then commit them by writing ``n_rows``."""
        if not self._buffer:
            return
        k, start = len(self._buffer), self._n
        self._ensure_capacity(start + k)
        cap = self._step_arr.shape[0]
        names = dict.fromkeys(n for _, row in self._buffer for n in row)
        for name in names:
            if name not in self._cols:
                self._cols[name] = zio.create_array(
                    self._group["m"], safe_key(name), shape=(cap,), chunks=(_CHUNK,), dtype="float64",
                    fill_value=np.nan, dimension_names=(STEP,), overwrite=True,
                    attributes={**(dict(self.describe(name)) if self.describe else {}), "metric_name": name})
        region = slice(start, start + k)
        items = [(arr, region, np.array([row.get(n, math.nan) for _, row in self._buffer], np.float64))
                 for n, arr in self._cols.items()]  # every column: stale rows must become NaN
        items.append((self._step_arr, region, np.array([s for s, _ in self._buffer], np.int64)))
        zio.write_many(items)
        self._commit(start + k)
        self._n, self._last = start + k, self._buffer[-1][0]
        self._buffer.clear()

    def _commit(self, n_rows: int) -> None:
        self._n_arr[0] = n_rows

    def truncate_after(self, step: int) -> int:
        """Drop rows (committed or buffered) with step > ``step``; returns how many committed rows went."""
        self._buffer = [(s, r) for s, r in self._buffer if s <= step]
        steps = np.asarray(self._step_arr[: self._n], dtype=np.int64)
        keep = int(np.searchsorted(steps, int(step), side="right"))
        dropped = self._n - keep
        if dropped:
            self._commit(keep)
        self._n = keep
        self._last = int(steps[keep - 1]) if keep else None
        return dropped

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _open_one(run_dir: str) -> xr.Dataset:
    root = _root(run_dir)
    if not zio.group_exists(root):
        raise FileNotFoundError(f"'{run_dir}' has no {METRICS}; {remedy('trained_run')}")
    group = zio.open_group(root, "r")
    n = _n_rows(group)
    cols = _columns(group)
    names = list(cols)
    values = zio.read_many([(zio.get_array(group, STEP), slice(0, n))] + [(cols[c], slice(0, n)) for c in names])
    data = {c: xr.Variable(STEP, v, attrs={k: a for k, a in zio.attrs(cols[c]).items() if k != "metric_name"})
            for c, v in zip(names, values[1:])}
    return xr.Dataset(data, coords={STEP: np.asarray(values[0], np.int64)}, attrs={"source": root})


def open_metrics(path_or_paths: Any) -> xr.Dataset:
    """Committed metric rows as a Dataset over ``step``; a list or glob of runs is concatenated along ``run``."""
    runs, multi = resolve_runs(path_or_paths, METRICS)
    dss = [_open_one(r) for r in runs]
    return concat_runs(dss, runs) if multi else dss[0]
