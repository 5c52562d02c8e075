"""Batch jobs on dask.distributed: sweeps, cluster == single process, a killed worker, concurrent
computes on one run, idempotent reruns, and bad input. One LocalCluster (2 workers) per module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import store
from cli.app import app
import scalars
from trainer.executor import batch_client
from trainer.sweep import expand_sweep, run_sweep

from tests._archive_files import flip_byte
from tests.conftest import TINY_OVERRIDES

runner = CliRunner()
TYPES = ["induction_score", "ablated_loss", "logit_lens_loss"]
OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith("train.steps")] + ["train.steps=40"]  # 5 checkpoints


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 spawned worker processes, shared by this module; yields its Client."""
    with batch_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, cluster):
    """Four tiny runs (seed=0..3) trained by a sweep on the module's cluster."""
    out = tmp_path_factory.mktemp("sweep")
    results = run_sweep(["seed=0..3"], out=str(out), preset="induction-tiny", overrides=OVERRIDES,
                        scheduler=cluster.scheduler.address)
    assert [r.status for r in results] == ["trained"] * 4
    return [r.run_dir for r in results]


@pytest.fixture(scope="module")
def reference(sweep_runs, tmp_path_factory):
    """The single-process results for every sweep run: {run name: {type: values}}."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for run in sweep_runs:
        copy = _copy(run, base)
        scalars.compute(copy, TYPES)
        out[os.path.basename(run)] = _values(copy)
    return out


def _copy(run, base) -> str:
    dst = os.path.join(base, os.path.basename(run))
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock-*"))
    return dst


def _values(run) -> dict[str, np.ndarray]:
    ds = store.open_scalars(run, with_masks=True)
    out = {t: ds[t].values for t in TYPES}
    out.update({f"mask_{t}": ds[f"computed__{t}"].values for t in TYPES})
    out["step"] = ds.step.values
    return out


def _assert_equal_to(reference, runs, *, rtol=0.0):
    for run in runs:
        got, want = _values(run), reference[os.path.basename(run)]
        assert set(got) == set(want)
        for k in want:
            if k.startswith("mask_") or k == "step" or rtol == 0.0:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{run} {k}")
            else:
                np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-7, err_msg=f"{run} {k}")
        assert all(got[f"mask_{t}"].all() for t in TYPES)


def test_workers_are_single_threaded_jax_processes(cluster):
    env = cluster.run(lambda: (os.getpid(), os.environ.get("XLA_FLAGS", ""), os.environ.get("OMP_NUM_THREADS")))
    assert len(env) == 2 and len({pid for pid, _, _ in env.values()} | {os.getpid()}) == 3
    assert all("--xla_cpu_multi_thread_eigen=false" in flags and omp == "1" for _, flags, omp in env.values())
    assert set(cluster.nthreads().values()) == {1}


@pytest.mark.slow
def test_sweep_grid_names_configs_and_coords(sweep_runs, cluster, tmp_path):
    assert [os.path.basename(r) for r in sweep_runs] == [f"seed-{i}" for i in range(4)]
    for i, run in enumerate(sweep_runs):
        info = store.read_run_json(run)
        assert info["sweep"] == {"seed": i} and info["config"]["seeds"]["init_seed"] == i
        assert [int(s) for s in store.open_archive(run).steps] == [0, 10, 20, 30, 40]
    # a rerun of the same sweep trains nothing and says so
    r = runner.invoke(app, ["train", "--preset", "induction-tiny", *sum((["--set", o] for o in OVERRIDES), []),
                            "--sweep", "seed=0..3", "--out", os.path.dirname(sweep_runs[0]), "-q"])
    assert r.exit_code == 0, r.output
    assert "0 runs to train (4 finished before)" in r.output and r.output.count("finished before (5 checkpoints)") == 4
    # the product of two sweeps, with aliases and a dotted key
    points = expand_sweep(["seed=0,1", "model.n_layers=1..2"], out=str(tmp_path), preset="induction-tiny",
                          overrides=OVERRIDES)
    assert [p.name for p in points] == ["seed-0_n_layers-1", "seed-0_n_layers-2", "seed-1_n_layers-1",
                                        "seed-1_n_layers-2"]
    assert [(p.config["seeds"]["init_seed"], p.config["model"]["n_layers"]) for p in points] == \
        [(0, 1), (0, 2), (1, 1), (1, 2)]


@pytest.mark.slow
def test_cluster_batch_equals_single_process(sweep_runs, reference, cluster, tmp_path):
    runs = [_copy(r, tmp_path) for r in sweep_runs]
    scalars.compute(runs[0], TYPES, steps="0-10")  # some cells already there: only the rest is computed
    lines = []
    reports = scalars.compute(runs, TYPES, log=lines.append, executor=scalars.engine.Dask(scheduler=cluster.scheduler.address, steps_per_task=3))
    assert lines[0] == f"{4 * 5 * 3 - 2 * 3} cells to compute over 4 run(s)"
    assert any(line.startswith("using the dask cluster at tcp://") and "dashboard http://" in line for line in lines)
    assert sum(r.cells_computed for r in reports) == 4 * 5 * 3 - 2 * 3
    assert [str(r.run_dir) for r in reports] == runs
    _assert_equal_to(reference, runs)
    ds = store.open_scalars(runs)
    assert ds.seed.values.tolist() == [0, 1, 2, 3]
    # a second identical command computes nothing, through the CLI too
    r = runner.invoke(app, ["compute", *runs, *sum((["--type", t] for t in TYPES), []), "-q",
                            "--scheduler", cluster.scheduler.address])
    assert r.exit_code == 0, r.output
    assert "0 cells to compute over 4 run(s)" in r.output and "started" not in r.output


@pytest.mark.slow
def test_killed_worker_is_retried_and_nothing_is_lost(sweep_runs, reference, cluster, tmp_path):
    runs = [_copy(r, tmp_path) for r in sweep_runs]
    killed = []

    def kill_a_busy_worker(task, report):
        if killed:
            return
        deadline = time.monotonic() + 10
        while not (busy := [w for w, keys in cluster.processing().items() if keys]):
            assert time.monotonic() < deadline, "no worker was busy"
            time.sleep(0.01)
        pids = cluster.run(os.getpid, workers=busy[:1])
        (pid,) = pids.values()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    reports = scalars.compute(runs, TYPES, on_task_done=kill_a_busy_worker, executor=scalars.engine.Dask(scheduler=cluster.scheduler.address, steps_per_task=2))
    assert len(killed) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert sum(r.cells_computed for r in reports) <= 4 * 5 * 3
    _assert_equal_to(reference, runs)
    assert scalars.compute(runs, TYPES, executor=scalars.engine.Dask(scheduler=cluster.scheduler.address))[0].cells_computed == 0
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted it for the next tests


@pytest.mark.slow
def test_two_concurrent_computes_on_one_run(sweep_runs, reference, cluster, tmp_path):
    run = _copy(sweep_runs[1], tmp_path)
    cmd = [sys.executable, "-m", "cli.app", "compute", run, "-q"]
    a = subprocess.Popen([*cmd, "--type", TYPES[0], "--type", TYPES[1], "--scheduler", cluster.scheduler.address,
                          "--steps-per-task", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([*cmd, "--type", TYPES[1], "--type", TYPES[2], "--steps", "10-40"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=240) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    scalars.compute(run, TYPES)  # what neither command asked for: logit_lens_loss at step 0
    assert store.open_scalars(run, with_masks=True)[f"computed__{TYPES[2]}"].values.all()
    # different fused programs may differ in the last bits; every cell is still the same computation
    _assert_equal_to(reference, [run], rtol=1e-5)
    r = runner.invoke(app, ["verify", run])
    assert r.exit_code == 0 and "ok:" in r.output, r.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bad_batch_input(sweep_runs, tmp_path):
    good = _copy(sweep_runs[0], tmp_path)
    (tmp_path / "notes").mkdir()
    r = runner.invoke(app, ["compute", str(tmp_path / "nothing-*"), "--type", "loss", "--workers", "2"])
    assert r.exit_code == 2 and "no run directories match" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["compute", good, str(tmp_path / "notes"), "--type", "loss", "--workers", "2"])
    assert r.exit_code == 2 and "not run directories (no run.json)" in r.output and "notes" in r.output
    assert not os.path.exists(os.path.join(good, "scalars.zarr"))  # nothing was computed
    t0 = time.perf_counter()
    address = f"tcp://127.0.0.1:{_closed_port()}"
    r = runner.invoke(app, ["compute", good, good, "--type", "loss", "--scheduler", address])
    assert time.perf_counter() - t0 < 10
    assert r.exit_code == 2 and "cannot reach the dask scheduler at tcp://127.0.0.1:" in r.output, r.output
    assert not os.path.exists(os.path.join(good, "scalars.zarr"))
    r = runner.invoke(app, ["compute", good, "--type", "loss", "--scheduler", "nonsense"])
    assert r.exit_code == 2 and "bad scheduler address 'nonsense'" in r.output
    r = runner.invoke(app, ["compute", good, "--type", "loss", "--workers", "0"])
    assert r.exit_code == 2 and "--workers must be at least 1" in r.output
    r = runner.invoke(app, ["compute", good, "--type", "loss", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2 and "drop --workers" in r.output
    assert not os.path.exists(os.path.join(good, "scalars.zarr"))


@pytest.mark.slow
def test_corrupted_checkpoint_in_a_batch_fails_only_that_step(sweep_runs, cluster, tmp_path):
    runs = [_copy(r, tmp_path) for r in sweep_runs[:2]]
    flip_byte(tmp_path / "seed-1", "*W_Q*", 2)
    r = runner.invoke(app, ["compute", *runs, "--type", "loss", "-q", "--scheduler", cluster.scheduler.address])
    assert r.exit_code == 1 and "checkpoint 20 fails its checksum" in r.output, r.output
    assert store.computed_mask(runs[0], "loss").all()
    assert store.computed_mask(runs[1], "loss").tolist() == [True, True, False, True, True]


@pytest.mark.parametrize("sweep, message", [
    (["seed=3..1"], "the range ends before it starts"),
    (["seed=0..x"], "a range is two integers"),
    (["bogus=1,2"], "neither a short name"),
    (["model.n_layer=1,2"], "unknown config key 'model.n_layer'"),
    (["seed=1,1"], "repeats a value"),
    (["init_seed=0,1", "seeds.init_seed=2"], "sets seeds.init_seed twice"),
    (["n_layers=0,1"], "model.n_layers must be a positive integer, got 0"),
])
def test_bad_sweeps_train_nothing(sweep, message, tmp_path):
    args = ["train", "--preset", "induction-tiny", "--out", str(tmp_path / "out"), "-q",
            *sum((["--set", o] for o in OVERRIDES), []), *sum((["--sweep", s] for s in sweep), [])]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_refuses_a_foreign_run_in_its_way(sweep_runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sweep_runs[0], out / "seed-0", ignore=shutil.ignore_patterns(".lock-*"))
    (out / "seed-1").mkdir()
    (out / "seed-1" / "x.txt").write_text("mine")
    r = runner.invoke(app, ["train", "--preset", "induction-tiny", "--out", str(out), "-q", "--sweep", "seed=0,1",
                            "--set", "train.steps=50"])
    assert r.exit_code == 2 and "holds a run with a different config" in r.output, r.output
    r = runner.invoke(app, ["train", "--preset", "induction-tiny", "--out", str(out), "-q", "--sweep", "seed=0,1",
                            *sum((["--set", o] for o in OVERRIDES), [])])
    assert r.exit_code == 2 and "seed-1' exists and is not a run of this sweep" in r.output, r.output


def test_sweeping_seed_varies_every_seed_the_user_does_not_name(tmp_path):
    seeds = lambda points: [tuple(p.config["seeds"][k] for k in ("init_seed", "train_seed", "eval_seed"))
                            for p in points]
    assert seeds(expand_sweep(["seed=0..2"], out=str(tmp_path), preset="induction-tiny")) == \
        [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert seeds(expand_sweep(["seed=0..1"], out=str(tmp_path), preset="induction-tiny",
                              overrides=["seeds.eval_seed=7"])) == [(0, 0, 7), (1, 1, 7)]
    assert seeds(expand_sweep(["seed=0,1", "train_seed=5"], out=str(tmp_path), preset="induction-tiny")) == \
        [(0, 5, 0), (1, 5, 1)]


def test_series_read_in_place_compute_on_the_cluster_as_in_one_process(cluster, tmp_path):
    """Two imported Hugging Face series (seeds of one suite), referenced in place: the workers decode
    their files like the single process does, and they open together with a `run` dim."""
    from trainer.interop.hf.importer import import_hf

    from tests._hf_series import make_series

    runs = [str(import_hf([make_series(tmp_path / f"series{s}", seed=s)], tmp_path / f"seed{s}")) for s in (0, 1)]
    single = [str(_copy(r, tmp_path / "single")) for r in runs]
    for r in single:
        scalars.compute(r, TYPES)
    reports = scalars.compute(runs, TYPES, executor=scalars.engine.Dask(scheduler=cluster.scheduler.address, steps_per_task=2))
    assert [r.failed_steps for r in reports] == [{}, {}] and sum(r.cells_computed for r in reports) == 2 * 3 * 3
    ds, want = store.open_scalars(runs), store.open_scalars(single)
    assert ds.sizes["run"] == 2 and ds.step.values.tolist() == [0, 10, 20]
    for t in TYPES:
        np.testing.assert_array_equal(ds[t].values, want[t].values)
    assert not np.array_equal(ds["ablated_loss"].values[0], ds["ablated_loss"].values[1])


SHIPPED_PLUGIN = '''
import jax.numpy as jnp
import scalars

@scalars.register("shipped_norm", dims=("layer",), probe=None, description="mean |W_O| per layer (a plugin type)")
def shipped_norm(model, probe, clean, ctx):
    return jnp.stack([jnp.abs(b.attn.W_O).mean() for b in model.blocks])
'''


def test_a_shipped_plan_is_the_plan_a_worker_runs_without_planning_again(tiny_run, copy_run, tmp_path):
    """What a cluster task receives: the client's plan, types by name (a plugin's function does not
    travel), probes with their registered input kind; restricted to the task's steps it computes
    exactly those cells, to the values an in-process compute stores."""
    import cloudpickle

    from scalars.engine._batch import restrict_plan, ship_plan, unship_plan

    plugin = tmp_path / "shipped.py"
    plugin.write_text(SHIPPED_PLUGIN)
    scalars.load_plugin(plugin)
    try:
        run, reference = copy_run(tiny_run, "shipped"), copy_run(tiny_run, "in_process")
        [plan] = scalars.plan(run, ["shipped_norm", "induction_score"])
        wire = cloudpickle.dumps(ship_plan(plan))
        (tmp_path / "shipped.pkl").write_bytes(wire)
        (tmp_path / "unshipped.pkl").write_bytes(cloudpickle.dumps(plan))
        load = "import cloudpickle, sys; cloudpickle.loads(open(sys.argv[1], 'rb').read()); print('ok')"
        fresh = [subprocess.run([sys.executable, "-c", load, str(tmp_path / f)], capture_output=True, text=True)
                 for f in ("shipped.pkl", "unshipped.pkl")]
        # a worker that has not loaded the plugin yet can read the shipped plan, not the plan itself
        assert fresh[0].stdout.strip() == "ok", fresh[0].stderr
        assert fresh[1].returncode != 0 and "ModuleNotFoundError" in fresh[1].stderr
        received = unship_plan(cloudpickle.loads(wire))
        assert [t.name for t in received.types] == [t.name for t in plan.types]
        assert received.probes["induction_score"].input_kind is plan.probes["induction_score"].input_kind
        part = restrict_plan(received, [10, 20])
        assert {k: v.tolist() for k, v in part.missing.items()} == {"shipped_norm": [10, 20], "induction_score": [10, 20]}
        report = scalars.engine.run_plan(part)
        assert report.cells_computed == 4
        scalars.compute(reference, ["shipped_norm", "induction_score"])
        got, want = store.open_scalars(run, with_masks=True), store.open_scalars(reference)
        assert got["computed__induction_score"].values.tolist() == [s in (10, 20) for s in got.step.values]
        for name in ("shipped_norm", "induction_score"):
            np.testing.assert_array_equal(got[name].sel(step=[10, 20]).values, want[name].sel(step=[10, 20]).values)
    finally:  # the type stays out of later tests in this worker
        scalars.registry.unregister("shipped_norm")
