"""`scalars show` and `scalars plot`: a rich table or a PNG of stored scalars."""

from __future__ import annotations

import difflib
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ._errors import check_output_file, user_errors

console = Console()


@user_errors
def show_command(
    run_dirs: list[str] = typer.Argument(..., help="run directories or quoted globs (several: a column per run)"),
    type_: Optional[str] = typer.Option(None, "--type", "-t", help="scalar to show (default: list what is stored)"),
    step: Optional[int] = typer.Option(None, "--step", help="the step of the top-heads (or top-cells) table; default the last"),
    steps: Optional[str] = typer.Option(None, "--steps", help="rows of the over-steps table, e.g. 0-1000, every:4 "
                                                               "(default: every stored step)"),
    top: int = typer.Option(10, "--top", help="rows of the top-heads table"),
) -> None:
    """Show what runs store, the top heads of a type at a step, and a type at every step."""
    import store
    from scalars.engine import select_steps
    from scalars.view.tables import nearest_step, over_steps, top_cells, top_heads

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    ds = store.open_scalars(run_dirs[0] if len(run_dirs) == 1 else run_dirs)
    where = run_dirs[0] if len(run_dirs) == 1 else f"{ds.sizes.get('run', len(run_dirs))} runs"
    if type_ is None:
        _print_stored(run_dirs, ds, where)
        return
    if type_ not in ds.data_vars:
        close = difflib.get_close_matches(type_, list(ds.data_vars), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"scalar '{type_}' is not stored in {where}{hint} (stored: "
                       f"{', '.join(sorted(ds.data_vars)) or 'none'})")
    rows_at = None if steps is None else select_steps(steps, ds.step.values)
    dims = tuple(d for d in ds[type_].dims if d not in ("step", "run"))
    runs = list(ds.run.values) if "run" in ds.dims else [None]
    for run in runs:
        sub = ds if run is None else ds.sel(run=run)
        label = "" if run is None else f"{run}: "
        if dims == ("layer", "head"):
            at = nearest_step(sub, step)
            rows = [[str(layer), str(head), f"{value:.4f}"] for layer, head, value in top_heads(sub, type_, at, top)]
            _print_table(f"{label}{type_} at step {at}: top {len(rows)} heads", ["layer", "head", type_], rows)
        elif dims:
            at = nearest_step(sub, step)
            header, rows = top_cells(sub, type_, at, top)
            _print_table(f"{label}{type_} at step {at}: top {len(rows)} cells", header, rows)
    _print_table(f"{type_} over steps", *over_steps(ds, type_, rows_at))
    note = ds[type_].attrs.get("nan_means")
    if note:
        console.print(f"NaN cells: {note}", soft_wrap=True)


def _print_stored(run_dirs: list[str], ds, where: str) -> None:
    import store

    table = Table(title=f"{where}: stored scalars")
    for col in ("name", "dims", "computed steps", "probe", "units"):
        table.add_column(col)
    masks = store.open_scalars(run_dirs[0] if len(run_dirs) == 1 else run_dirs, with_masks=True)
    for name in sorted(ds.data_vars):
        mask = masks.get(f"computed__{name}")
        n = int(mask.values.sum()) if mask is not None else ds.sizes["step"]
        total = int(np.prod([ds.sizes[d] for d in ("step", "run") if d in ds.sizes]))
        da = ds[name]
        table.add_row(name, ", ".join(d for d in da.dims if d != "run"), f"{n}/{total}", str(da.attrs.get("probe", "")),
                      str(da.attrs.get("units", "")))
    console.print(table)


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@user_errors
def plot_command(
    run_dirs: list[str] = typer.Argument(..., help="run directories or quoted globs (several: one row or line each)"),
    type_: list[str] = typer.Option(..., "--type", "-t", help="scalar to plot (repeat to draw several on one axis)"),
    out: str = typer.Option(..., "-o", "--out", help="PNG file to write"),
    log_step: bool = typer.Option(False, "--log-step", help="logarithmic step axis"),
    overlay: bool = typer.Option(False, "--overlay", help="one axis: a line per run (its best head, or --head)"),
    head: Optional[str] = typer.Option(None, "--head", help="the (layer, head) cell to draw, as L.H (e.g. 1.3)"),
    align_at: Optional[float] = typer.Option(None, "--align-at",
                                             help="shift each line so it crosses this value at step 0 (marked)"),
) -> None:
    """Plot stored scalars: step x head heatmaps and top heads, or lines comparing runs and types."""
    import store
    from scalars.view.plotting import plot_type

    check_output_file(out)
    ds = store.open_scalars(run_dirs[0] if len(run_dirs) == 1 else run_dirs)
    n = plot_type(ds, type_, out, log_step=log_step, overlay=overlay, head=_parse_head(head), align_at=align_at)
    console.print(f"wrote {out} ({n} panels)", soft_wrap=True)


def _parse_head(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        layer, head = (int(p) for p in text.replace(",", ".").split("."))
    except ValueError:
        raise ValueError(f"--head takes LAYER.HEAD, e.g. 1.3, got {text!r}") from None
    return layer, head
