"""The `scalars` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import typer

from ._errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Derived scalars over checkpoint archives.")


@app.callback()
def main() -> None:
    """Train small transformers, archive every checkpoint, compute derived scalars over them."""


from ._train import train_command  # noqa: E402

from ._compute import compute_command, probes_command, types_command  # noqa: E402
from ._hf import export_command, export_scalars_command  # noqa: E402
from ._import import import_command  # noqa: E402
from ._open import open_command  # noqa: E402
from ._show import plot_command, show_command  # noqa: E402
from ._patterns import patterns_command  # noqa: E402
from ._verify import verify_command  # noqa: E402

app.command("train")(train_command)
app.command("compute")(compute_command)
app.command("types")(types_command)
app.command("probes")(probes_command)
app.command("verify")(verify_command)
app.command("show")(show_command)
app.command("plot")(plot_command)
app.command("patterns")(patterns_command)
app.command("import")(import_command)
app.command("export")(export_command)
app.command("export-scalars")(export_scalars_command)
app.command("open")(open_command)


@app.command()
@user_errors
def demo(out: str = typer.Option("demo-run", "--out", help="run directory to write")) -> None:
    """Train induction-tiny, compute the standard suite, print the top induction heads, write a plot."""
    from ._demo import run_demo

    run_demo(out)


if __name__ == "__main__":
    app()
