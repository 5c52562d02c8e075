"""Turn user errors into one clean line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, TypeError,
               MemoryError)
err_console = Console(stderr=True)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or exc.__class__.__name__


def _os_error(exc: OSError) -> str:
    """One sentence for an OSError: what failed, on which file, and what to do for the common ones."""
    import errno

    where = f" writing {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the disk{where}; free space there (`df -h .` shows how much is left) and rerun "
                "the same command: everything stored before is kept")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where or ''}; check the folder's owner and mode, or pass another path"
    if exc.errno == errno.EROFS:
        return f"the file system is read-only{where}; pass a path on a writable disk"
    return f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}"


def user_errors(fn: Callable) -> Callable:
    """Decorator for CLI commands: user errors print `error: <sentence>` and exit with code 2; the store's
    remedies in those sentences are said in the command line's words."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from store.remedies import speaking

        from ._remedies import CLI_WORDS

        try:
            with speaking(CLI_WORDS):  # the store's remedies name commands and flags
                return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            err_console.print(f"[bold red]error:[/] {escape(_message(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; what was committed is kept, rerun the same command to finish")
            raise typer.Exit(code=130) from None
        except OSError as exc:  # disk full, permissions: still one line
            err_console.print(f"[bold red]error:[/] {escape(_os_error(exc))}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(code=1) from None

    return wrapper


def check_output_file(path: str) -> None:
    """ValueError unless ``path`` can be written as a new or replaced file (checked before any work)."""
    import os

    if os.path.isdir(path):
        raise ValueError(f"output '{path}' is a directory; pass a file name such as {os.path.join(path, 'plot.png')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"the folder of output '{path}' does not exist; create {parent} first or pass another path")


def check_output_dir(path: str) -> None:
    """ValueError if a directory cannot be made at ``path`` because something on its way is a file."""
    import os

    here = os.path.abspath(path)
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if os.path.exists(here) and not os.path.isdir(here):
        raise ValueError(f"cannot create '{path}': '{here}' is a file, not a folder; pass another --out")


def exit_now(message: str, code: int) -> None:
    """Print one error line and end the process at once, without waiting for stuck threads."""
    import os

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)
