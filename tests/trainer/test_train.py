"""Training: bit-exact resume after real SIGKILLs, crash-safe saves, config errors, interventions."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import store
from trainer.config import resolve_config
from trainer.train import train

TINY = [
    "model.d_model=32", "model.n_heads=2", "task.seq_len=24", "task.segment_len_min=4", "task.segment_len_max=8",
    "train.steps=60", "train.batch_size=8", "train.eval_every=20", "train.eval_size=16", "train.log_every=5",
    "checkpoints.schedule=every:10",
]


def tiny_config(*extra: str) -> dict:
    return resolve_config("induction-tiny", None, TINY + list(extra))


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, **kw)


def archive_arrays(run_dir) -> dict[int, dict[str, np.ndarray]]:
    reader = store.open_archive(run_dir)
    return {int(s): reader.load(int(s)) for s in reader.steps}


def assert_same_archives(a, b) -> None:
    ca, cb = archive_arrays(a), archive_arrays(b)
    assert sorted(ca) == sorted(cb)
    for step in ca:
        for name in ca[step]:
            assert np.array_equal(ca[step][name], cb[step][name]), f"step {step} leaf {name} differs"


def assert_same_metrics(a, b) -> None:
    ma, mb = store.open_metrics(a), store.open_metrics(b)
    assert ma.step.values.tolist() == mb.step.values.tolist() and sorted(ma.data_vars) == sorted(mb.data_vars)
    for name in ma.data_vars:
        np.testing.assert_array_equal(ma[name].values, mb[name].values, err_msg=name)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_config(), run)
    return run


def test_run_dir_layout_and_metrics(reference_run):
    info = store.read_run_json(reference_run)
    assert info["schema_version"] == store.SCHEMA_VERSION
    assert info["seeds"] == {"init_seed": 0, "train_seed": 0, "eval_seed": 0}
    assert "jax" in info["versions"] and info["config"]["train"]["steps"] == 60
    assert list(store.open_archive(reference_run).steps) == [0, 10, 20, 30, 40, 50, 60]
    m = store.open_metrics(reference_run)
    assert m.step.values.tolist() == list(range(61))
    assert np.isfinite(m.train_loss.sel(step=slice(0, 59))).all()
    assert np.isfinite(m.eval_repeat_loss.sel(step=[0, 20, 40, 60])).all()
    assert store.verify_archive(reference_run) == []


def test_a_run_carries_its_coords_and_runs_written_before_get_them_from_the_trainer(reference_run, tmp_path):
    """run.json names the run's short coords itself (a store alone reads them); for a run.json written
    before it did, the trainer's registered reader derives the same from the config."""
    import shutil

    info = store.read_run_json(reference_run)
    assert info["coords"] == {"seed": 0, "n_layers": 2, "n_heads": 2, "d_model": 32, "preset": "induction-tiny"}
    new, new2, old = tmp_path / "new", tmp_path / "new2", tmp_path / "old"
    for d in (new, new2, old):
        shutil.copytree(reference_run, d, ignore=shutil.ignore_patterns(".lock-*"))
    (old / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "coords"}))
    both = store.open_metrics([str(new), str(old)])
    assert both.seed.values.tolist() == [0, 0] and both.d_model.values.tolist() == [32, 32]
    alone = subprocess.run([sys.executable, "-c", "import sys, store; ds = store.open_metrics(sys.argv[1:]); "
                            "assert 'trainer' not in sys.modules; print(ds.seed.values.tolist())", str(new), str(new2)],
                           capture_output=True, text=True)
    assert alone.returncode == 0 and alone.stdout.strip() == "[0, 0]", alone.stderr


def test_same_config_twice_is_bit_identical(reference_run, tmp_path):
    again = tmp_path / "again"
    train(tiny_config(), again)
    assert_same_archives(reference_run, again)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference_run, tmp_path):
    """Several real SIGKILLs at random points (across steps and saves), each followed by --resume."""
    rng = random.Random(1234)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(tiny_config()))
    for trial in range(3):
        run = tmp_path / f"killed{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.app", "train", "--config", str(config_file), "--out", str(run), "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        target = rng.randint(1, 5)  # kill once this many checkpoints are committed, plus a random delay
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(store.open_archive(run).steps) >= target:
                    break
            except Exception:
                pass
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert store.verify_archive(run) == []
        done = cli("train", "--resume", str(run), "-q")
        assert done.returncode == 0, done.stderr
        assert_same_archives(reference_run, run)
        assert_same_metrics(reference_run, run)


@pytest.mark.slow
def test_metric_rows_not_yet_flushed_survive_a_crash_in_the_resume_state(reference_run, tmp_path, monkeypatch):
    import trainer.train as train_module

    monkeypatch.setattr(train_module, "METRICS_FLUSH_SECONDS", 1e9)  # rows stay buffered until the end
    write = store.ArchiveWriter.write_checkpoint

    def crash_at_40(self, step, leaves):
        if step == 40:
            raise OSError("injected write failure")
        return write(self, step, leaves)

    monkeypatch.setattr(store.ArchiveWriter, "write_checkpoint", crash_at_40)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="injected"):
        train(tiny_config(), run)
    assert store.open_metrics(run).sizes["step"] == 0  # nothing reached metrics.zarr before the crash
    assert list(store.open_archive(run).steps) == [0, 10, 20, 30]
    _, meta = store.read_resume_state(run, 30)
    assert [s for s, _ in meta["metrics_rows"]] == list(range(30))
    monkeypatch.setattr(store.ArchiveWriter, "write_checkpoint", write)
    train(tiny_config(), run, resume=True)
    assert_same_archives(reference_run, run)
    assert_same_metrics(reference_run, run)


KILL_DURING_SAVE = """
import os, signal, sys
import store.checkpoints as ck
original = ck.ArchiveWriter._commit
def commit(self, slot, step):
    if step == 30:
        os.kill(os.getpid(), signal.SIGKILL)  # all leaves of step 30 written, its commit record not
    return original(self, slot, step)
ck.ArchiveWriter._commit = commit
from cli.app import app
sys.argv = ["scalars", "train", "--config", sys.argv[1], "--out", sys.argv[2], "-q"]
app()
"""


@pytest.mark.slow
def test_kill_during_a_save_never_exposes_a_half_written_checkpoint(reference_run, tmp_path):
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(tiny_config()))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(config_file), str(run)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert list(store.open_archive(run).steps) == [0, 10, 20]
    ok = cli("verify", str(run))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert cli("train", "--resume", str(run), "-q").returncode == 0
    assert_same_archives(reference_run, run)
    assert_same_metrics(reference_run, run)


def test_out_dir_holding_a_run_is_refused_and_untouched(reference_run):
    before = archive_arrays(reference_run)
    res = cli("train", "--preset", "induction-tiny", "--out", str(reference_run), "-q")
    assert res.returncode == 2
    assert "already holds a run" in res.stderr and "Traceback" not in res.stderr
    after = archive_arrays(reference_run)
    assert sorted(after) == sorted(before)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "induction-tiyn"], "unknown preset 'induction-tiyn'"),
        (["--set", "train.stepz=3"], "unknown config key 'train.stepz'"),
        pytest.param(["--set", "train.steps=many"], "config key 'train.steps' expects a int", marks=pytest.mark.slow),
        pytest.param(["--set", "model.d_model=30"], "divisible by model.n_heads", marks=pytest.mark.slow),
        pytest.param(["--set", "checkpoints.schedule=every:x"], "checkpoint schedule", marks=pytest.mark.slow),
        pytest.param(["--set", "task.kind=vision"], "unknown task.kind 'vision'", marks=pytest.mark.slow),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, args, message):
    res = cli("train", "--out", str(tmp_path / "x"), "-q", *args)
    assert res.returncode == 2
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_wrong_h5_shape_is_refused(tmp_path):
    import h5py

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["resnet18/224/feat"] = np.zeros((10, 64), np.float32)
    res = cli("train", "--preset", "icl-bursty", "--set", "task.data.source=h5", "--set", f"task.data.path={path}",
              "--out", str(tmp_path / "x"), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "shape" in res.stderr and "(10, 64)" in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_head_ablation_intervention_keeps_the_head_dead(tmp_path):
    """An ablated head's output weights get no gradient from the loss while it is ablated."""
    iv = '[{"kind": "ablate_head", "layer": 0, "head": 1, "start": 0, "stop": 30}]'
    run = tmp_path / "run"
    train(tiny_config(f"interventions={iv}", "train.grad_clip=null", "train.weight_decay=0.0"), run)
    reader = store.open_archive(run)
    w0, w20, w40 = (reader.load(s)["blocks.0.attn.W_O"] for s in (0, 20, 40))
    assert np.array_equal(w0[1], w20[1]), "ablated head 1's W_O moved while ablated"
    assert not np.array_equal(w0[0], w20[0]), "other heads must train"
    assert not np.array_equal(w20[1], w40[1]), "after the window the head trains again"


@pytest.mark.parametrize(
    "intervention, leaf, frozen, free",
    [
        ('{"kind": "clamp_pattern", "layer": 0, "head": 0, "pattern": "prev_token", "start": 0, "stop": 30}',
         "blocks.0.attn.W_Q", (0,), (1,)),
        pytest.param('{"kind": "ablate_neuron", "layer": 0, "neuron": 5, "start": 0, "stop": 30}',
                     "blocks.0.mlp.W_out", (5,), (6,), marks=pytest.mark.slow),
    ],
)
def test_clamp_and_neuron_interventions_cut_the_gradient(tmp_path, intervention, leaf, frozen, free):
    """A clamped pattern gives its head's W_Q no gradient; an ablated neuron gives its W_out row none."""
    extra = ["model.attn_only=false"] if "neuron" in intervention else []
    run = tmp_path / "run"
    train(tiny_config(f"interventions=[{intervention}]", "train.grad_clip=null", *extra), run)
    reader = store.open_archive(run)
    w0, w20 = reader.load(0)[leaf], reader.load(20)[leaf]
    assert np.array_equal(w0[frozen], w20[frozen])
    assert not np.array_equal(w0[free], w20[free])


def test_resume_of_a_run_killed_before_its_first_checkpoint(reference_run, tmp_path):
    """run.json and an empty archive exist, nothing is committed: resume starts over and saves step 0."""
    run = tmp_path / "run"
    cfg = tiny_config()
    store.write_run_json(run, {"config": cfg})
    store.ArchiveWriter(run, store.open_archive(reference_run).leaf_specs)
    assert list(store.open_archive(run).steps) == []
    train(cfg, run, resume=True)
    assert_same_archives(reference_run, run)
