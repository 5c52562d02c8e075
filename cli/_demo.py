"""The README demo: train induction-tiny, compute the standard suite, print top heads, write a plot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()



def run_demo(out: str) -> None:
    import store
    import scalars

    from ._progress import CountProgress, TrainingProgress
    from scalars.view.plotting import plot_type
    from scalars.view.tables import top_heads
    from trainer.config import resolve_config
    from trainer.train import train

    run = Path(out)
    if not store.is_run_dir(run):
        console.rule("1. train induction-tiny (2-layer attention-only LM on repeated segments)")
        with TrainingProgress() as bar:
            result = train(resolve_config("induction-tiny"), run, on_progress=bar)
        console.print(f"saved {len(result.steps_saved)} checkpoints in {result.seconds:.0f}s")
    else:
        console.rule(f"1. {run} already holds a run: finishing it if it was interrupted")
        with TrainingProgress() as bar:
            train(store.read_run_json(run)["config"], run, resume=True, on_progress=bar)
    console.rule("2. compute the standard suite over every checkpoint")
    plans = scalars.plan(run, ["standard"])
    total = sum(p.n_cells for p in plans)
    with CountProgress(total, enabled=total > 0) as bar:
        reports = scalars.compute(run, plans=plans, log=console.print, on_progress=lambda done, _total: bar.update(done))
    for rep in reports:
        console.print(f"{rep.cells_computed} cells over {rep.checkpoints_computed} checkpoints in {rep.seconds:.1f}s")
    ds = store.open_scalars(run)
    last = int(ds.step[-1])
    console.rule(f"3. top induction heads at the last step ({last})")
    table = Table()
    for col in ("layer", "head", "induction_score", "prev_token_score", "ablated_loss - loss"):
        table.add_column(col, justify="right")
    base = float(ds["loss"].sel(step=last))
    for layer, head, value in top_heads(ds, "induction_score", last, k=5):
        prev = float(ds["prev_token_score"].sel(step=last, layer=layer, head=head))
        abl = float(ds["ablated_loss"].sel(step=last, layer=layer, head=head))
        table.add_row(str(layer), str(head), f"{value:.3f}", f"{prev:.3f}", f"{abl - base:+.3f}")
    console.print(table)
    best = ds["induction_score"].sel(layer=1).max("head").compute()
    first = best.where(best > 0.3, drop=True)
    if first.sizes["step"]:
        console.print(f"the best layer-1 head's induction score first exceeds 0.3 at step {int(first.step[0])}")
    png = run / "induction_score.png"
    plot_type(ds, "induction_score", png)
    console.rule("4. plot")
    console.print(f"wrote {png}")
