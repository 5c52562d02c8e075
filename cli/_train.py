"""`scalars train`: resolve the config, print it, train (or resume) a run."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.syntax import Syntax

from ._errors import check_output_dir, user_errors
from ._progress import CountProgress, TrainingProgress

console = Console()


@user_errors
def train_command(
    out: Optional[str] = typer.Option(None, "--out", "-o", help="run directory to create"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="named config (induction-tiny, icl-bursty, ...)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="JSON or TOML config file"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override: key.path=value (repeatable)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the interrupted run in this directory"),
    from_step: Optional[int] = typer.Option(None, "--from-step", help="with --resume: resume from this checkpoint"),
    show_config: bool = typer.Option(False, "--show-config", help="print the effective config and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    sweep: list[str] = typer.Option([], "--sweep", help="train a grid: key=A..B or key=v1,v2 (repeatable); "
                                                        "--out is then the parent dir; see docs/batch.md"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="with --sweep: local worker processes"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="with --sweep: dask cluster tcp://HOST:PORT"),
    plugin: list[str] = typer.Option([], "--plugin", help="a .py file registering tasks (trainer.tasks.register_task) "
                                                          "or types; repeatable; see docs/extending.md"),
) -> None:
    """Train a small transformer on a synthetic task and write a dense checkpoint archive."""
    import store
    from trainer.config import resolve_config
    from trainer.train import train

    if plugin and sweep:
        raise ValueError("--plugin applies to a single run (sweep workers run in other processes); train the grid's "
                         "runs one by one with --plugin, or package the task and register it on import")
    if plugin:
        import scalars

        for path in plugin:
            scalars.load_plugin(path)

    if sweep:
        if resume is not None or from_step is not None or show_config:
            raise ValueError("--sweep cannot be combined with --resume/--from-step/--show-config; rerun the same "
                             "sweep to resume its interrupted runs")
        if out is None:
            raise ValueError("--out is required with --sweep: the parent directory of the runs, e.g. --out runs/")
        _sweep(sweep, out, preset, config, set_, workers, scheduler, quiet)
        return
    if workers is not None or scheduler is not None:
        raise ValueError("--workers/--scheduler apply to --sweep; a single run trains in this process")
    if resume is not None:
        if out is not None or preset is not None or config is not None or set_:
            raise ValueError("--resume takes the config from the run itself; drop --out/--preset/--config/--set")
        cfg = store.read_run_json(resume)["config"]
        with TrainingProgress(enabled=not quiet) as bar:
            result = train(cfg, resume, resume=True, on_progress=bar, log=console.print, from_step=from_step)
    else:
        if from_step is not None:
            raise ValueError("--from-step only applies with --resume RUN_DIR")
        cfg = resolve_config(preset, config, set_)
        if show_config:
            console.print(Syntax(json.dumps(cfg, indent=2), "json"))
            return
        if out is None:
            raise ValueError("--out is required: the run directory to create, e.g. --out runs/tiny")
        check_output_dir(out)
        if not quiet:
            console.print(f"[bold]preset[/] {cfg.get('preset')}  [bold]out[/] {out}")
            console.print(Syntax(json.dumps(cfg, indent=1), "json", word_wrap=True))
        with TrainingProgress(enabled=not quiet) as bar:
            result = train(cfg, out, on_progress=bar, log=console.print)
    if result.finished_before:
        steps = store.read_run_json(result.run_dir)["config"]["train"]["steps"]
        console.print(f"'{result.run_dir}' is already finished (its checkpoint at train.steps={steps} is stored); "
                      "nothing to resume; to train longer, start a new run with --set train.steps=N --out NEW",
                      soft_wrap=True)
        return
    console.print(
        f"saved {len(result.steps_saved)} checkpoints to {result.run_dir} in {result.seconds:.1f}s "
        f"(final loss {result.final_loss:.4f}; checkpoint writing {result.write_seconds:.1f}s in the background)"
    )


def _sweep(sweep: list[str], out: str, preset, config, set_, workers, scheduler, quiet: bool) -> None:
    from trainer.sweep import run_sweep

    with CountProgress(enabled=not quiet, label="runs", unit="runs") as bar:
        results = run_sweep(sweep, out=out, preset=preset, config_file=config, overrides=set_, workers=workers,
                            scheduler=scheduler, on_progress=bar.update, log=console.print)
    for r in results:
        extra = f", final loss {r.final_loss:.4f}, {r.seconds:.1f}s" if r.status != "finished before" else ""
        console.print(f"{r.run_dir}: {r.status} ({r.checkpoints} checkpoints{extra})")
