"""`scalars open RUN --step N`: an IPython session holding one checkpoint's model, probe and helpers."""

from __future__ import annotations

import typer
from rich.console import Console

from ._errors import user_errors

console = Console()
NO_IPYTHON = "scalars open needs IPython for its interactive session; install it with `pip install ipython`"


def _start_ipython(ns: dict) -> None:
    """IPython with `ns` as its namespace; it reads commands from stdin when that is not a terminal."""
    import IPython
    from traitlets.config import Config

    config = Config()
    config.TerminalIPythonApp.display_banner = False
    config.TerminalInteractiveShell.confirm_exit = False
    IPython.start_ipython(argv=[], user_ns=ns, config=config)


@user_errors
def open_command(
    run_dir: str = typer.Argument(..., help="run directory"),
    step: str = typer.Option("last", "--step", help="checkpoint step: a number, first or last"),
    print_namespace: bool = typer.Option(False, "--print-namespace",
                                         help="print the banner (what the session holds) and exit"),
) -> None:
    """Start IPython with one checkpoint loaded: model, cache, probe and ablation/patching helpers."""
    from scalars.one_checkpoint import banner, session_namespace

    if not print_namespace:
        try:
            import IPython  # noqa: F401
        except ImportError:
            raise ValueError(NO_IPYTHON) from None
    ns = session_namespace(run_dir, step)
    console.print(banner(ns), highlight=False, markup=False, soft_wrap=True)
    if not print_namespace:
        _start_ipython(ns)
