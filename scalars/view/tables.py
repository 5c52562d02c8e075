"""Tables of stored scalars as plain rows (the CLI renders them with rich)."""

from __future__ import annotations

import numpy as np
import xarray as xr

import store


def nearest_step(ds: xr.Dataset, step: int | None) -> int:
    """`step` if stored, the last step if None; a clear error otherwise."""
    steps = ds.step.values
    if step is None:
        return int(steps[-1])
    if step not in set(steps.tolist()):
        near = ", ".join(str(s) for s in store.nearest_steps(steps, step))
        raise ValueError(f"step {step} is not stored; nearest stored steps: {near}")
    return int(step)


def top_heads(ds: xr.Dataset, name: str, step: int | None = None, k: int = 10) -> list[tuple[int, int, float]]:
    """(layer, head, value) of the k largest values of a (layer, head) type at a step."""
    da = ds[name]
    if tuple(d for d in da.dims if d != "step") != ("layer", "head"):
        raise ValueError(f"scalar '{name}' has dims {da.dims}, not (step, layer, head); use --step to see it per step")
    values = da.sel(step=nearest_step(ds, step)).values
    order = np.argsort(np.nan_to_num(values, nan=-np.inf).ravel())[::-1][:k]
    rows = []
    for idx in order:
        i, j = np.unravel_index(idx, values.shape)
        rows.append((int(da["layer"][i]), int(da["head"][j]), float(values[i, j])))
    return rows


def top_cells(ds: xr.Dataset, name: str, step: int | None = None, k: int = 10) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the k largest cells of a type at a step, any dims (e.g. a path_patch's
    (layer, head, dst_layer, dst_head, side)); NaN cells (not applicable) are left out."""
    da = ds[name].sel(step=nearest_step(ds, step))
    dims = list(da.dims)
    values = np.asarray(da.values, np.float64)
    flat = values.ravel()
    order = [i for i in np.argsort(np.nan_to_num(flat, nan=-np.inf))[::-1] if np.isfinite(flat[i])][:k]
    rows = []
    for idx in order:
        where = np.unravel_index(idx, values.shape)
        rows.append([str(da[d].values[i]) for d, i in zip(dims, where)] + [f"{flat[idx]:.4f}"])
    return dims + [name], rows


def _cell_label(dims: list[str], cell) -> str:
    values = np.atleast_1d(cell)
    if dims == ["layer", "head"]:
        return f"L{values[0]}H{values[1]}"
    return ",".join(map(str, values))


def _max_cell(da: xr.DataArray, dims: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per step: the largest value over the cells of `dims` and which cell holds it ('' where all NaN)."""
    flat = da.stack(c=dims).transpose("step", "c")
    values, cells = np.asarray(flat.values, np.float64), flat.c.values
    best = np.full(values.shape[0], np.nan)
    where = [""] * values.shape[0]
    for i, row in enumerate(values):
        if np.isfinite(row).any():
            j = int(np.nanargmax(row))
            best[i], where[i] = row[j], _cell_label(dims, cells[j])
    return best, where


def over_steps(ds: xr.Dataset, name: str, steps=None, max_columns: int = 12) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a type's values at every stored step (or at `steps`): a column per cell
    where there are few, the max head per layer (with its head) for (layer, head) types, the max cell
    and where it is for types with more than `max_columns` cells. Several runs (a `run` dim): a
    column per run with its max cell."""
    da = ds[name]
    if steps is not None:
        da = da.sel(step=np.asarray(steps))
    dims = [d for d in da.dims if d not in ("step", "run")]
    step_labels = [str(int(s)) for s in da.step.values]
    if "run" in da.dims:
        cols = []
        for run in da.run.values:
            sub = da.sel(run=run)
            best, where = _max_cell(sub, dims) if dims else (np.asarray(sub.values, np.float64), [""] * sub.sizes["step"])
            cols.append([f"{v:.4f}" + (f" {w}" if w else "") for v, w in zip(best, where)])
        header = ["step"] + [f"{run}" + (" (max cell)" if dims else "") for run in da.run.values]
        return header, [[step] + [col[i] for col in cols] for i, step in enumerate(step_labels)]
    n_cells = int(np.prod([da.sizes[d] for d in dims])) if dims else 1
    if dims == ["layer", "head"]:
        header = ["step"] + [f"max over heads, layer {int(layer)}" for layer in da["layer"].values]
        cols = []
        for layer in da["layer"].values:
            best, where = _max_cell(da.sel(layer=layer), ["head"])
            cols.append([f"{v:.4f} H{w}" if w else "nan" for v, w in zip(best, where)])
        return header, [[step] + [col[i] for col in cols] for i, step in enumerate(step_labels)]
    if dims and n_cells > max_columns:
        best, where = _max_cell(da, dims)
        rows = [[step, f"{v:.4f}", w] for step, v, w in zip(step_labels, best, where)]
        return ["step", f"max over {n_cells} cells", f"at ({', '.join(dims)})"], rows
    if dims:
        stacked = da.stack(c=dims).transpose("step", "c")
        header = ["step"] + [",".join(map(str, np.atleast_1d(c))) for c in stacked.c.values]
        vals = stacked.values
    else:
        header, vals = ["step", name], da.values[:, None]
    return header, [[step] + [f"{v:.4f}" for v in np.atleast_1d(vals[i])] for i, step in enumerate(step_labels)]
