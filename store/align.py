"""Scalars joined with training metrics on ``step``: metrics are logged densely, scalars only at checkpoints.

``align_with_metrics`` picks, for every checkpoint step, each metric's value at the nearest logged
step (optionally smoothed first); ``open_run`` opens one run or many and does the join, so a
notebook can put ``induction_score`` and ``train_loss`` on one axis. Scalars stay lazy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .dims import RUN, STEP
from .metrics import open_metrics
from ._runs import concat_runs, resolve_runs
from ._schema import MASK_PREFIX
from .scalars_open import open_scalars
from .scalars_store import SCALARS

__all__ = ["align_with_metrics", "open_run", "metric_at_steps"]

METRIC_PREFIX = "metric_"  # added to a metric whose name is also a scalar's


def metric_at_steps(series: pd.Series, steps: np.ndarray, *, smooth: int | None = None,
                    tolerance: int | None = None) -> np.ndarray:
    """Values of a step-indexed series at ``steps``: NaN rows dropped, centred rolling mean over
    ``smooth`` logged rows, then the nearest logged step (NaN if farther than ``tolerance``, or
    more than one logging interval before the first or after the last logged step)."""
    s = series.dropna().sort_index()
    out = np.full(len(steps), np.nan)
    if s.empty or len(steps) == 0:
        return out
    if smooth is not None and smooth > 1:
        s = s.rolling(int(smooth), center=True, min_periods=1).mean()
    steps = np.asarray(steps)
    idx = s.index.get_indexer(steps, method="nearest", tolerance=tolerance)
    gap = float(np.median(np.diff(s.index.to_numpy()))) if len(s) > 1 else 0.0
    idx[(steps < s.index[0] - gap) | (steps > s.index[-1] + gap)] = -1  # no extrapolation past the log
    found = idx >= 0
    out[found] = s.to_numpy(np.float64)[idx[found]]
    return out


def _align_one(metrics: xr.Dataset, steps: np.ndarray, smooth: int | None, tolerance: int | None) -> xr.Dataset:
    data = {name: (STEP, metric_at_steps(metrics[name].to_series(), steps, smooth=smooth, tolerance=tolerance))
            for name in metrics.data_vars if metrics[name].dims == (STEP,)}
    return xr.Dataset(data, coords={STEP: steps})


def align_with_metrics(scalars: xr.Dataset, metrics: xr.Dataset, *, smooth: int | None = None,
                       tolerance: int | None = None) -> xr.Dataset:
    """``scalars`` plus every metric sampled at the scalar steps (see ``metric_at_steps``).

    Both single-run, or both with a ``run`` dim (matched by run label; a run without metrics gets
    NaN). A metric named like a scalar becomes ``metric_<name>``. Metric attrs record ``smooth``.
    """
    if smooth is not None and (not isinstance(smooth, int) or smooth < 1):
        raise ValueError(f"smooth={smooth!r} must be a positive number of logged rows (1 = no smoothing)")
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance={tolerance!r} must be a non-negative number of steps")
    multi_s, multi_m = RUN in scalars.dims, RUN in metrics.dims
    if multi_s != multi_m:
        raise ValueError("scalars and metrics must both come from one run or both from several runs (a `run` "
                         "dim); open them with the same run directories")
    steps = np.asarray(scalars[STEP].values)
    if multi_s:
        labels = list(scalars[RUN].values)
        have = set(metrics[RUN].values.tolist())
        parts = [_align_one(metrics.sel({RUN: r}).drop_vars([c for c in metrics.coords if RUN in metrics[c].dims]),
                            steps, smooth, tolerance) if r in have
                 else _align_one(xr.Dataset(), steps, smooth, tolerance) for r in labels]
        aligned = xr.concat(parts, dim=pd.Index(labels, name=RUN), join="outer", data_vars="all", coords="minimal",
                            compat="override", fill_value=np.nan)
    else:
        aligned = _align_one(metrics, steps, smooth, tolerance)
    out = scalars.copy()
    for name in aligned.data_vars:
        target = f"{METRIC_PREFIX}{name}" if name in scalars.variables else str(name)
        var = aligned[name]
        if multi_s:
            var = var.transpose(RUN, STEP)
        out[target] = var.assign_attrs(source="metrics.zarr", metric=str(name), smooth=smooth or 1,
                                       sampled_at="nearest logged step to each checkpoint step")
    return out


def open_run(path_or_paths: Any, *, smooth: int | None = None, tolerance: int | None = None,
             **open_kwargs: Any) -> xr.Dataset:
    """``open_scalars`` of one run (or a list/glob of runs) joined with its metrics on ``step``.

    Several runs are joined one by one, then concatenated along ``run`` like ``open_scalars``.
    """
    runs, multi = resolve_runs(path_or_paths, SCALARS)
    parts = [align_with_metrics(open_scalars(r, **open_kwargs), open_metrics(r), smooth=smooth, tolerance=tolerance)
             for r in runs]
    if not multi:
        return parts[0]
    out = concat_runs(parts, runs)  # aligned per run: a run's metrics are NaN at steps it has no checkpoint at
    for name in [v for v in out.data_vars if str(v).startswith(MASK_PREFIX)]:
        out[name] = out[name].fillna(False).astype(bool)
    return out
