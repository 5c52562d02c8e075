"""`scalars compute`, `scalars types` and `scalars probes`: thin wrappers over `scalars.compute` and the registries."""

from __future__ import annotations

import logging
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._errors import exit_now, user_errors

console = Console()


def _load_plugins(plugins: list[str]) -> None:
    from scalars.registry import load_entry_point_plugins, load_plugin

    load_entry_point_plugins()
    for path in plugins:
        load_plugin(path)


@user_errors
def compute_command(
    run_dirs: list[str] = typer.Argument(..., help="run directories (or quoted globs)"),
    type_: list[str] = typer.Option([], "--type", "-t", help="derived-scalar type (repeatable), or a set: standard (the demo's five); see `scalars types`"),
    all_: bool = typer.Option(False, "--all", help="every registered type that applies to the run"),
    steps: Optional[str] = typer.Option(None, "--steps", help="e.g. 0-1000, 0,500,1000, every:4, last"),
    probe: Optional[str] = typer.Option(None, "--probe", help="probe name or .npy/.npz file (default: each type's)"),
    force: bool = typer.Option(False, "--force", help="recompute the requested cells (stored ones stay until "
                                                       "replaced by fresh values)"),
    plugin: list[str] = typer.Option([], "--plugin", help="python file that registers more types (repeatable)"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="checkpoints per compiled call"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w",
                                          help="local dask worker processes (default: one per core for several runs; "
                                               "1 computes in this process)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="use the dask cluster at tcp://HOST:PORT"),
    steps_per_task: Optional[int] = typer.Option(None, "--steps-per-task", help="checkpoints per dask task"),
    option: list[str] = typer.Option([], "--option", help="a type's option TYPE.KEY=VALUE (repeatable), e.g. "
                                     "llc.step_size=1e-4; stored in the variable's attrs"),
    stall_timeout: float = typer.Option(900.0, "--stall-timeout", min=0.1,
                                        help="seconds without a finished checkpoint block before the compute is "
                                             "called stalled and stopped"),
    estimate: bool = typer.Option(False, "--estimate", help="print what the request would cost (cells, FLOPs per "
                                  "type, compile and per-checkpoint time measured on the first checkpoint) and "
                                  "stop; nothing is stored"),
) -> None:
    """Compute derived scalars for every (selected) checkpoint of each run; only missing cells.

    Several runs (or --workers N, or --scheduler ADDR) run on dask.distributed; see docs/batch.md.
    """
    import scalars
    from scalars.engine import Dask, StallError, format_estimate, parse_type_options

    from ._progress import CountProgress

    _load_plugins(plugin)
    # a type's failure at run time is reported once below, without JAX's logged traceback of it
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    if estimate:
        for est in scalars.estimate(run_dirs, type_, all_types=all_, steps=steps, probe=probe, force=force,
                                    block_size=block_size, plugins=plugin, options=parse_type_options(option)):
            for line in format_estimate(est):
                _log(line)
        return
    executor = Dask(workers=workers, scheduler=scheduler, steps_per_task=steps_per_task)  # one run: in process
    plans = scalars.plan(run_dirs, type_, all_types=all_, steps=steps, probe=probe, force=force,
                         options=parse_type_options(option))
    try:
        total = sum(p.n_cells for p in plans)
        with CountProgress(total, enabled=not quiet and total > 0) as bar:
            reports = scalars.compute(run_dirs, all_types=all_, plans=plans, executor=executor, block_size=block_size,
                                      plugins=plugin, on_progress=lambda done, _total: bar.update(done), log=_log,
                                      stall_timeout=stall_timeout, type_timing=True)
    except StallError as exc:  # its stuck threads never return: leave at once (nothing half-written is left)
        exit_now(str(exc), code=3)
    failed = False
    for rep in reports:
        for w in rep.warnings:
            console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
        for s, why in sorted(rep.failed_steps.items()):
            console.print(f"[red]failed:[/] {escape(str(rep.run_dir))}: {escape(why)}", soft_wrap=True)
            failed = True
        console.print(f"{rep.run_dir}: {rep.cells_computed} cells computed over {rep.checkpoints_computed} "
                      f"checkpoints in {rep.seconds:.1f}s")
        if len(rep.type_seconds) > 1:
            _log(f"  per type (compute time split by XLA FLOP share): {_type_times(rep.type_seconds)}")
    if failed:
        raise typer.Exit(code=1)


@user_errors
def types_command(plugin: list[str] = typer.Option([], "--plugin", help="python file that registers more types")) -> None:
    """List the registered derived-scalar types: name, dims, probe, description."""
    from scalars.registry import list_types

    _load_plugins(plugin)
    rows = [(t.name, ", ".join(("step",) + tuple(t.dims)), _probe_words(t.probe), t.requires or "any",
             t.description + (" (opt-in: computed only when named)" if t.opt_in else "")) for t in list_types()]
    if not console.is_terminal or console.width < 120:  # piped or narrow: one block per type, nothing cut
        for name, dims, probe, needs, description in rows:
            console.print(Text(f"{name}  [{dims}]  probe: {probe}  needs: {needs}", style="bold"),
                          soft_wrap=not console.is_terminal)
            console.print(Text(f"    {description}"), soft_wrap=not console.is_terminal)
        return
    table = Table(title="derived-scalar types")
    table.add_column("name", no_wrap=True)
    for col in ("dims", "probe", "needs", "description"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # plain text: brackets in descriptions are not markup
    console.print(table)


@user_errors
def probes_command(plugin: list[str] = typer.Option([], "--plugin", help="python file that registers more probes or "
                                                                        "types")) -> None:
    """List the named probes a run can build (`--probe NAME:key=N,...`): model head, options, description."""
    from scalars.probes import list_probes

    _load_plugins(plugin)
    for b in list_probes():
        options = ", ".join(f"{k}={'auto' if v is None else v}" for k, v in b.options.items()) or "none"
        console.print(Text(f"{b.name}  needs: {b.requires or 'any'}  options: {options}", style="bold"),
                      soft_wrap=not console.is_terminal)
        console.print(Text(f"    {b.description}"), soft_wrap=not console.is_terminal)
    console.print(Text("Also: a classifier run's evaluation sets by name (icl, iwl, ...), induction_pair, "
                       "label_swap_pair, and .npy/.npz probe files; NAME:stride=K keeps every K-th sequence."),
                  soft_wrap=not console.is_terminal)


def _log(line: str) -> None:
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def _type_times(seconds: dict[str, float], top: int = 8) -> str:
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{n} {s:.1f}s" for n, s in ranked[:top])
    if len(ranked) > top:
        text += f", {len(ranked) - top} more {sum(s for _, s in ranked[top:]):.1f}s"
    return text


def _probe_words(probe: str | None) -> str:
    return "none (weights only)" if probe is None else probe
