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


def over_steps(ds: xr.Dataset, name: str, max_rows: int = 20, max_columns: int = 12) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a type's values over (a subsample of) steps; (layer, head) types show the
    max head per layer, types with more than `max_columns` cells show their max cell and where it is."""
    da = ds[name]
    dims = [d for d in da.dims if d != "step"]
    steps = ds.step.values
    pick = np.unique(np.linspace(0, len(steps) - 1, min(max_rows, len(steps))).astype(int))
    n_cells = int(np.prod([da.sizes[d] for d in dims])) if dims else 1
    if dims and dims != ["layer", "head"] and n_cells > max_columns:
        flat = da.stack(c=dims)
        stacked, cells = np.asarray(flat.values, np.float64), flat.c.values
        rows = []
        for i in pick:
            row = stacked[i]
            if np.isfinite(row).any():
                j = int(np.nanargmax(row))
                rows.append([str(int(steps[i])), f"{row[j]:.4f}", ",".join(map(str, np.atleast_1d(cells[j])))])
            else:
                rows.append([str(int(steps[i])), "nan", ""])
        return ["step", f"max over {n_cells} cells", f"at ({', '.join(dims)})"], rows
    if dims == ["layer", "head"]:
        header = ["step"] + [f"max over heads, layer {int(l)}" for l in da["layer"].values]
        vals = da.max("head").values
    elif dims:
        stacked = da.stack(c=dims)
        header = ["step"] + [",".join(map(str, np.atleast_1d(c))) for c in stacked.c.values]
        vals = stacked.values
    else:
        header, vals = ["step", name], da.values[:, None]
    rows = [[str(int(steps[i]))] + [f"{v:.4f}" for v in np.atleast_1d(vals[i])] for i in pick]
    return header, rows
