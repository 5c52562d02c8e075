"""`scalars verify`: checksums, shapes and commit records of a run's stores."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ._errors import user_errors

console = Console()


@user_errors
def verify_command(run_dir: str = typer.Argument(..., help="run directory")) -> None:
    """Check every committed checkpoint and every computed scalar cell; exit 1 if anything is wrong."""
    import store

    store.read_run_json(run_dir)
    notes: list[str] = []
    problems = store.verify_archive(run_dir, notes) + store.verify_scalars(run_dir, notes)
    for note in notes:  # left by a killed writer, cleared by the next one: not a problem
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if problems:
        for p in problems:
            console.print(f"[red]problem:[/] {escape(p)}", soft_wrap=True)
        raise typer.Exit(code=1)
    n = len(store.open_archive(run_dir).steps)
    console.print(f"ok: {run_dir}: {n} committed checkpoints, checksums, shapes and scalar cells verified")
