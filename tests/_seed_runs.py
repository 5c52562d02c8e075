"""Three seeds of a small induction run whose heads form within ~300 steps (shared by the notebook and
user-guide tests; trained once per test session, about a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

SEEDS = (0, 1, 2)
TYPES = ["induction_score", "prev_token_score"]
# short sequences with 3 copies of a short segment and the loss on copied tokens only: the layer-0
# previous-token head and the layer-1 induction head form by step ~150-300 (seed-dependent)
OVERRIDES = [
    "task.vocab_size=32", "task.seq_len=32", "model.n_ctx=32", "task.segment_len_min=4", "task.segment_len_max=8",
    "task.n_repeats=2", "task.loss_on=copy", "train.steps=320", "train.lr=3e-3", "train.warmup_steps=30",
    "train.eval_every=80", "train.eval_size=64", "train.log_every=5", "checkpoints.schedule=every:20",
]


def seed_runs(tmp_path_factory) -> Path:
    """The folder holding ``runs/seed0..2`` (trained and computed on first use in this session)."""
    import scalars
    from trainer.config import resolve_config
    from trainer.train import train

    base = tmp_path_factory.getbasetemp() / "seed_runs"
    done = base / ".done"
    if done.exists():
        return base
    dirs = []
    for seed in SEEDS:
        run = base / "runs" / f"seed{seed}"
        config = resolve_config("induction-tiny", None, OVERRIDES + [f"seeds.init_seed={seed}",
                                                                       f"seeds.train_seed={seed}"])
        train(config, run)
        dirs.append(str(run))
    scalars.compute(dirs, TYPES)
    done.touch()
    return base
