"""`scalars patterns`: a PNG and an interactive HTML page of a run's mean attention patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ._errors import user_errors

console = Console()


def _stem(out: Optional[str], step: int, layer: Optional[int], head: Optional[int]) -> Path:
    if out is None:
        which = "".join(f"-{k}{v}" for k, v in (("L", layer), ("H", head)) if v is not None)
        return Path(f"patterns-step{step}{which}")
    path = Path(out)
    return path.with_suffix("") if path.suffix.lower() in (".png", ".html") else path


@user_errors
def patterns_command(
    run_dir: str = typer.Argument(..., help="run directory"),
    step: int = typer.Option(..., "--step", help="checkpoint step of the PNG (and where the page opens)"),
    layer: Optional[int] = typer.Option(None, "--layer", help="only this layer (default: every layer)"),
    head: Optional[int] = typer.Option(None, "--head", help="only this head (default: every head: a grid)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="output stem: writes OUT.png and OUT.html "
                                      "(default patterns-stepN[-L..][-H..])"),
    no_compute: bool = typer.Option(False, "--no-compute", help="only read what is stored; never compute "
                                    "missing checkpoints of attention_pattern"),
) -> None:
    """Draw the stored attention_pattern (computing missing checkpoints first): a PNG at --step
    and a self-contained HTML page with a head selector and a step slider."""
    from scalars.view import load_pattern_view, write_pattern_html, write_pattern_png

    view = load_pattern_view(run_dir, step=step, layer=layer, head=head, compute_missing=not no_compute,
                             log=console.print)
    stem = _stem(out, step, layer, head)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, page = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".html")
    n = write_pattern_png(view, step, png, layer=layer, head=head)
    size = write_pattern_html(view, page, step=step, layer=layer, head=head)
    console.print(f"wrote {png} ({n} panel{'s' if n != 1 else ''} at step {step}) and {page} "
                  f"({len(view.steps)} steps, {size / 1e6:.1f} MB)", soft_wrap=True)
