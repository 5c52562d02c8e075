"""Shared test fixtures and strict JAX settings."""

import os

# strict JAX, set in the environment so that the command-line processes the tests start are strict
# too: no implicit rank promotion (broadcasting is written out, `trainer.model.to_rank`), standard
# dtype promotion
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
os.environ["JAX_NUMPY_DTYPE_PROMOTION"] = "standard"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# rich wraps command output at the terminal width, 80 columns without a terminal: wide enough here
# that the long temporary paths of parallel test workers never wrap a table cell or a message
os.environ.setdefault("COLUMNS", "200")

import fcntl
import tempfile
from pathlib import Path

import jax
import pytest

assert jax.config.jax_numpy_rank_promotion == "raise" and jax.config.jax_numpy_dtype_promotion == "standard"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Tests marked big_memory (several GiB each: the full 78,400-sequence probe) run one at a time
    across the xdist workers, under a file lock that the workers of one run share: two at once can
    exhaust a 24 GiB machine, and the engine's memory check then refuses the second one's compute."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if item.get_closest_marker("big_memory") is None or run_id is None:
        return (yield)
    with open(Path(tempfile.gettempdir()) / f"derived-scalars-big-memory-{run_id}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the test fails
        return (yield)


@pytest.fixture
def key():
    return jax.random.key(0)


TINY_OVERRIDES = [
    "model.d_model=32", "model.n_heads=2", "task.seq_len=24", "task.segment_len_min=4", "task.segment_len_max=8",
    "train.steps=60", "train.batch_size=8", "train.eval_every=20", "train.eval_size=16", "train.log_every=5",
    "checkpoints.schedule=every:10",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 60-step, 7-checkpoint induction run (seconds to train); tests copy it before writing."""
    from trainer.config import resolve_config
    from trainer.train import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    train(resolve_config("induction-tiny", None, TINY_OVERRIDES), run)
    return run


@pytest.fixture(scope="session")
def trained_induction_tiny(tmp_path_factory):
    """The real induction-tiny preset trained through its phase change (about a minute on 2 cores)."""
    from trainer.config import resolve_config
    from trainer.train import train

    run = tmp_path_factory.mktemp("induction_tiny") / "run"
    train(resolve_config("induction-tiny"), run)
    return run


REGRESSION_OVERRIDES = [
    "task.n_tasks=1", "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "task.context_len=8",
    "train.steps=90", "train.batch_size=32", "train.eval_every=30", "train.eval_size=64",
    "checkpoints.schedule=every:30", "train.warmup_steps=10", "train.lr=3e-3",
]


@pytest.fixture(scope="session")
def memorizing_regression_run(tmp_path_factory):
    """A small icl-regression run with one task (M = 1), memorized within 90 steps: 4 checkpoints (seconds)."""
    from trainer.config import resolve_config
    from trainer.train import train

    run = tmp_path_factory.mktemp("regression_m1") / "run"
    train(resolve_config("icl-regression", None, REGRESSION_OVERRIDES), run)
    return run


@pytest.fixture
def copy_run(tmp_path):
    """copy_run(src) -> a fresh copy of a run directory under tmp_path."""
    import shutil

    def copy(src, name="run"):
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock-*"))
        return dst

    return copy


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib Figure saved during the test: (panels without colorbars, figure)."""
    import matplotlib.figure

    saved = []
    real = matplotlib.figure.Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(([a for a in self.axes if a.get_label() != "<colorbar>"], self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved
