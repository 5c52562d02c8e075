"""`scalars export` (a checkpoint as a Hugging Face directory of its family) and `scalars export-scalars`.

`scalars import DIR... --out RUN_DIR` (GPT-2 directories -> a run) lives in cli/_import.py; both
call trainer/interop/hf/families.py.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from ._errors import user_errors

console = Console()


@user_errors
def export_command(
    run_dir: str = typer.Argument(..., help="run directory"),
    step: str = typer.Option(..., "--step", help="checkpoint step to export: a step number, first or last"),
    format_: str = typer.Option("hf", "--format", help="checkpoint format: hf (config.json + model.safetensors of the "
                                                     "run's family: gpt2, gpt_neox or llama)"),
    out: str = typer.Option(..., "-o", "--out", help="directory to create"),
) -> None:
    """Export one checkpoint of a run as a Hugging Face directory of its family (GPT-2, GPT-NeoX or Llama)."""
    if format_ != "hf":
        raise ValueError(f"--format {format_!r} is not supported; use --format hf")
    import store
    from scalars.engine import select_steps
    from trainer.interop.hf.families import export_hf

    if not store.is_run_dir(run_dir):
        raise ValueError(f"'{run_dir}' is not a run directory (no run.json); pass a directory written by "
                         "`scalars train` or `scalars import`")
    (at,) = select_steps(step, store.open_archive(run_dir).steps) if "," not in step else (None,)
    if at is None:
        raise ValueError(f"--step takes one step (a number, first or last), got {step!r}")
    path = export_hf(run_dir, int(at), out)
    console.print(f"wrote {path}/config.json and {path}/model.safetensors (step {int(at)})", soft_wrap=True)


@user_errors
def export_scalars_command(
    run_dirs: list[str] = typer.Argument(..., help="run directories (several: one file with a run column/dim)"),
    format_: Optional[str] = typer.Option(None, "--format", help="netcdf or csv (default: from the -o suffix)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="file to write (default RUN_DIR/scalars.nc|.csv)"),
    type_: list[str] = typer.Option([], "--type", "-t", help="only this scalar (repeatable; default all)"),
) -> None:
    """Write stored scalars as one netCDF-4 file or one long-format CSV (step, layer, head, ..., type, value):
    a row per computed cell (NaN where the computed value is NaN), integer coordinates kept."""
    from store.export import export_scalars

    path = export_scalars(run_dirs[0] if len(run_dirs) == 1 else run_dirs, out, format_, types=type_ or None)
    console.print(f"wrote {path}", soft_wrap=True)
