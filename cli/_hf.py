"""`scalars export` (a checkpoint as a Hugging Face GPT-2 directory) and `scalars export-scalars`.

`scalars import DIR... --out RUN_DIR` (GPT-2 directories -> a run) lives in cli/_import.py; both
call trainer/hf_gpt2.py.
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
    step: int = typer.Option(..., "--step", help="checkpoint step to export"),
    format_: str = typer.Option("hf", "--format", help="checkpoint format: hf (GPT-2 config.json + model.safetensors)"),
    out: str = typer.Option(..., "-o", "--out", help="directory to create"),
) -> None:
    """Export one checkpoint of a GPT-2-compatible run as a Hugging Face GPT-2 directory."""
    if format_ != "hf":
        raise ValueError(f"--format {format_!r} is not supported; use --format hf")
    from trainer.hf_gpt2 import export_hf

    path = export_hf(run_dir, step, out)
    console.print(f"wrote {path}/config.json and {path}/model.safetensors (step {step})")


@user_errors
def export_scalars_command(
    run_dirs: list[str] = typer.Argument(..., help="run directories (several: one file with a run column/dim)"),
    format_: Optional[str] = typer.Option(None, "--format", help="netcdf or csv (default: from the -o suffix)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="file to write (default RUN_DIR/scalars.nc|.csv)"),
) -> None:
    """Write stored scalars as one netCDF-4 file or one long-format CSV (step, layer, head, ..., type, value)."""
    from store.export import export_scalars

    path = export_scalars(run_dirs[0] if len(run_dirs) == 1 else run_dirs, out, format_)
    console.print(f"wrote {path}")
