"""Plots of stored scalars with matplotlib through xarray: step x head heatmaps, top-head lines.

`plot_type(ds, name, path)` draws, for a (layer, head) type, one step x head heatmap per layer
plus a panel of lines for the top heads over steps; for per-step or per-layer types, lines over
steps. Several runs (a `run` dim) are overlaid as lines and faceted as heatmap rows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


def _top_heads(da: xr.DataArray, k: int) -> list[tuple[int, int]]:
    """(layer, head) pairs with the largest final-step value (NaN-safe)."""
    last = da.isel(step=-1).values
    if np.all(np.isnan(last)):
        last = np.nanmax(da.values, axis=0)
    flat = np.argsort(np.nan_to_num(last, nan=-np.inf).ravel())[::-1][:k]
    layers, heads = np.unravel_index(flat, last.shape)
    return [(int(da["layer"][i]), int(da["head"][j])) for i, j in zip(layers, heads)]


def plot_type(ds: xr.Dataset, name: str, path: str | Path, *, log_step: bool = False, top: int = 4) -> int:
    """Write a PNG of scalar `name` to `path`; returns the number of panels drawn."""
    if name not in ds.data_vars:
        known = ", ".join(sorted(ds.data_vars)) or "none"
        raise KeyError(f"scalar '{name}' is not stored here; stored: {known}. Compute it with `scalars compute --type {name}`")
    da = ds[name].load()
    runs = list(da.run.values) if "run" in da.dims else [None]
    dims = [d for d in da.dims if d not in ("step", "run")]
    if dims == ["layer", "head"]:
        n_layers = da.sizes["layer"]
        vmin, vmax = float(np.nanmin(da.values)), float(np.nanmax(da.values))
        fig, axes = plt.subplots(len(runs), n_layers + 1, figsize=(4 * (n_layers + 1), 3.2 * len(runs)), squeeze=False)
        for r, run in enumerate(runs):
            sub = da if run is None else da.sel(run=run)
            for layer in range(n_layers):
                ax = axes[r, layer]
                sub.isel(layer=layer).transpose("head", "step").plot.pcolormesh(
                    ax=ax, x="step", y="head", add_colorbar=True, vmin=vmin, vmax=vmax)  # one scale: layers comparable
                ax.set_title(f"{'' if run is None else str(run) + ' '}layer {int(sub.layer[layer])}")
                if log_step:
                    ax.set_xscale("symlog", linthresh=max(1, int(sub.step[1]) if sub.sizes["step"] > 1 else 1))
            ax = axes[r, -1]
            for layer, head in _top_heads(sub, top):
                sub.sel(layer=layer, head=head).plot.line(ax=ax, x="step", label=f"L{layer}H{head}")
            ax.set_title(f"top {top} heads")
            ax.legend(fontsize=7)
            if log_step:
                ax.set_xscale("symlog", linthresh=1)
        n_panels = len(runs) * (n_layers + 1)
    else:
        fig, ax = plt.subplots(1, 1, figsize=(6, 4))
        series = da
        extra = [d for d in dims]
        for run in runs:
            sub = series if run is None else series.sel(run=run)
            if extra:
                stacked = sub.stack(component=extra).transpose("step", "component")
                for i in range(stacked.sizes["component"]):
                    label = ",".join(f"{d}={v}" for d, v in zip(extra, np.atleast_1d(stacked.component.values[i])))
                    ax.plot(stacked.step, stacked.isel(component=i), label=f"{'' if run is None else str(run) + ' '}{label}")
            else:
                ax.plot(sub.step, sub.values, label=str(run) if run is not None else name)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name} ({ds[name].attrs.get('units', '')})")
        ax.legend(fontsize=7)
        if log_step:
            ax.set_xscale("symlog", linthresh=1)
        n_panels = 1
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return n_panels
