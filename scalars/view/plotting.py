"""Plots of stored scalars with matplotlib: step x head heatmaps, and lines over steps that compare runs
and types on one axis.

`plot_type(ds, name, path)` draws, for a (layer, head) type, one step x head heatmap per layer (one
row per run) plus a panel of lines for the top heads; for any other type, lines over steps: one
per cell where there are few, the top cells by final value where there are many (never one line
per cell of a large type). `overlay=True`, several names, a chosen `head` or `align_at` draw one
axis with one line per (run, type): the chosen head or each run's best cell, optionally shifted so
that each line crosses `align_at` at step 0 (crossings marked).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_LINES = 12  # a type with more cells than this is drawn as its top cells, never a line per cell
Line = tuple[str, np.ndarray, np.ndarray]  # label, steps, values


def _cell_dims(da: xr.DataArray) -> list[str]:
    return [d for d in da.dims if d not in ("step", "run")]


def _final(da: xr.DataArray) -> np.ndarray:
    """Each cell's last finite value over steps (NaN where it has none), shaped like one step."""
    values = np.asarray(da.transpose("step", ...).values, np.float64)
    out = np.full(values.shape[1:], np.nan)
    for i in range(values.shape[0]):
        row = values[i]
        out = np.where(np.isfinite(row), row, out)
    return out


def _coord(da: xr.DataArray, dim: str, i: int) -> object:
    """The plain Python value of coordinate `i` of `dim` (numbers, or the names of a string dim)."""
    value = da[dim].values[i]
    return value.item() if isinstance(value, np.generic) else value


def _top_cells(da: xr.DataArray, k: int) -> list[dict[str, object]]:
    """The k cells with the largest final value, as {dim: coord} selections (NaN-safe)."""
    dims = _cell_dims(da)
    last = _final(da)
    flat = np.argsort(np.nan_to_num(last, nan=-np.inf).ravel())[::-1][:k]
    return [{d: _coord(da, d, i) for d, i in zip(dims, np.unravel_index(j, last.shape))} for j in flat]


def _all_cells(da: xr.DataArray) -> list[dict[str, object]]:
    """Every cell, in coordinate order."""
    dims = _cell_dims(da)
    return [{d: _coord(da, d, i) for d, i in zip(dims, idx)}
            for idx in np.ndindex(*(da.sizes[d] for d in dims))]


def _label(cell: dict[str, object]) -> str:
    if set(cell) == {"layer", "head"}:
        return f"L{cell['layer']}H{cell['head']}"
    if {"layer", "head", "src_layer", "src_head"} <= set(cell):  # a head pair: source -> destination
        rest = {d: v for d, v in cell.items() if d not in ("layer", "head", "src_layer", "src_head")}
        pair = f"L{cell['src_layer']}H{cell['src_head']}→L{cell['layer']}H{cell['head']}"
        return " ".join([pair, *(f"{d}={v}" for d, v in rest.items())])
    return ",".join(f"{d}={v}" for d, v in cell.items())


def _check(ds: xr.Dataset, name: str) -> xr.DataArray:
    if name not in ds.data_vars:
        known = ", ".join(sorted(ds.data_vars)) or "none"
        raise KeyError(f"scalar '{name}' is not stored here; stored: {known}. Compute it with "
                       f"`scalars compute --type {name}`")
    return ds[name].load()


def _runs(da: xr.DataArray) -> list:
    return list(da.run.values) if "run" in da.dims else [None]


def _one_run(da: xr.DataArray, run) -> xr.DataArray:
    return da if run is None else da.sel(run=run)


def _series(sub: xr.DataArray, cell: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    one = sub.sel(cell) if cell else sub
    return np.asarray(one.step.values), np.asarray(one.values, np.float64)


def _lines(ds: xr.Dataset, names: Sequence[str], *, compare: bool, head: tuple[int, int] | None,
           top: int) -> list[Line]:
    """The lines to draw: with `compare`, one per (run, type) (chosen head or best cell); else,
    for one type, one per cell (or its top cells)."""
    lines: list[Line] = []
    for name in names:
        da = _check(ds, name)
        dims = _cell_dims(da)
        if head is not None and set(dims) != {"layer", "head"}:
            raise ValueError(f"--head picks a (layer, head) cell, but '{name}' has dims ({', '.join(dims) or 'none'})")
        for run in _runs(da):
            sub = _one_run(da, run)
            prefix = " ".join(str(p) for p in ((run if run is not None else None),
                                                name if len(names) > 1 else None) if p is not None)
            if head is not None:
                if head[0] not in sub["layer"].values or head[1] not in sub["head"].values:
                    raise ValueError(f"--head {head[0]}.{head[1]} is not a head of '{name}' (layers "
                                     f"{sub['layer'].values.tolist()}, heads {sub['head'].values.tolist()})")
                cells = [{"layer": head[0], "head": head[1]}]
            elif not dims:
                cells = [{}]
            elif compare:
                cells = _top_cells(sub, 1)
            else:
                n = int(np.prod([sub.sizes[d] for d in dims]))
                cells = _all_cells(sub) if n <= MAX_LINES else _top_cells(sub, 2 * top)
            for cell in cells:
                steps, values = _series(sub, cell)
                label = " ".join(p for p in (prefix, _label(cell)) if p) or name
                lines.append((label, steps, values))
    return lines


def crossing(steps: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """The first step at which `values` reaches `level` from below (linearly interpolated), or None."""
    ok = np.isfinite(values)
    steps, values = np.asarray(steps, np.float64)[ok], values[ok]
    above = np.flatnonzero(values >= level)
    if not above.size:
        return None
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    return float(s0 + (level - v0) / (v1 - v0) * (s1 - s0)) if v1 != v0 else float(s1)


def _draw_lines(ax, lines: Sequence[Line], align_at: float | None) -> list[str]:
    """Draw the lines (shifted to their crossing of `align_at`); returns the labels that never cross."""
    never = []
    for label, steps, values in lines:
        x = np.asarray(steps, np.float64)
        if align_at is not None:
            at = crossing(steps, values, align_at)
            if at is None:
                never.append(label)
                continue
            x = x - at
            (line,) = ax.plot(x, values, label=f"{label} (crosses at {at:.0f})")
            ax.plot([0.0], [align_at], "o", color=line.get_color(), markersize=5)
        else:
            ax.plot(x, values, label=label)
    if align_at is not None:
        ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle="--")
        ax.axhline(align_at, color="0.7", linewidth=0.6, linestyle=":")
    return never


def _heatmaps(ds: xr.Dataset, name: str, *, log_step: bool, top: int):
    da = _check(ds, name)
    runs, n_layers = _runs(da), da.sizes["layer"]
    vmin, vmax = float(np.nanmin(da.values)), float(np.nanmax(da.values))
    fig, axes = plt.subplots(len(runs), n_layers + 1, figsize=(4.2 * (n_layers + 1), 3.3 * len(runs)),
                             squeeze=False, layout="constrained")
    for r, run in enumerate(runs):
        sub = _one_run(da, run)
        for layer in range(n_layers):
            ax = axes[r, layer]
            sub.isel(layer=layer).transpose("head", "step").plot.pcolormesh(
                ax=ax, x="step", y="head", add_colorbar=True, vmin=vmin, vmax=vmax)  # one scale: layers comparable
            ax.set_title(f"{'' if run is None else str(run) + ' '}layer {int(sub.layer[layer])}")
            ax.set_yticks(np.asarray(sub["head"].values))  # heads are integers
            if log_step:
                ax.set_xscale("symlog", linthresh=max(1, int(sub.step[1]) if sub.sizes["step"] > 1 else 1))
        ax = axes[r, -1]
        for cell in _top_cells(sub, top):
            ax.plot(*_series(sub, cell), label=_label(cell))
        ax.set_title(f"top {top} heads")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        if log_step:
            ax.set_xscale("symlog", linthresh=1)
    return fig, len(runs) * (n_layers + 1)


def plot_type(ds: xr.Dataset, names: str | Sequence[str], path: str | Path, *, log_step: bool = False, top: int = 4,
              overlay: bool = False, head: tuple[int, int] | None = None, align_at: float | None = None) -> int:
    """Write a PNG of the scalar(s) `names` to `path`; returns the number of panels drawn."""
    fig, n_panels = make_figure(ds, names, log_step=log_step, top=top, overlay=overlay, head=head, align_at=align_at)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return n_panels


def make_figure(ds: xr.Dataset, names: str | Sequence[str], *, log_step: bool = False, top: int = 4,
                overlay: bool = False, head: tuple[int, int] | None = None, align_at: float | None = None):
    """The (figure, number of panels) that `plot_type` saves."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no type to plot; pass --type NAME")
    compare = overlay or len(names) > 1 or head is not None or align_at is not None
    first = _check(ds, names[0])
    if not compare and _cell_dims(first) == ["layer", "head"]:
        fig, n_panels = _heatmaps(ds, names[0], log_step=log_step, top=top)
    else:
        fig, ax = plt.subplots(1, 1, figsize=(7.5, 4.5), layout="constrained")
        lines = _lines(ds, names, compare=compare, head=head, top=top)
        never = _draw_lines(ax, lines, align_at)
        units = {str(ds[n].attrs.get("units", "")) for n in names} - {""}
        ax.set_xlabel("steps after crossing " + f"{align_at:g}" if align_at is not None else "step")
        ax.set_ylabel(f"{' / '.join(names)}" + (f" ({', '.join(sorted(units))})" if units else ""))
        n_cells = int(np.prod([first.sizes[d] for d in _cell_dims(first)])) if _cell_dims(first) else 1
        if not compare and n_cells > MAX_LINES:
            ax.set_title(f"top {len(lines)} of {n_cells} cells by final value", fontsize=9)
        if never:
            ax.set_title(f"never reaches {align_at:g}: {', '.join(never)}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
        if log_step and align_at is None:
            ax.set_xscale("symlog", linthresh=1)
        n_panels = 1
    fig.suptitle(", ".join(names))
    return fig, n_panels
