"""The compute engine over a run: end to end, incremental, crash-safe, batched, and its errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

import store
import scalars

from tests._archive_files import flip_byte

SUITE = ["induction_score", "prev_token_score", "ablated_loss"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True)


def stored(run, name):
    return store.open_scalars(run)[name].values


@pytest.mark.slow
def test_end_to_end_induction_tiny(trained_induction_tiny, copy_run):
    run = copy_run(trained_induction_tiny)
    res = cli("compute", str(run), "--type", "induction_score", "--type", "prev_token_score", "--type", "ablated_loss", "-q")
    assert res.returncode == 0, res.stderr
    ds = xr.open_zarr(run / "scalars.zarr", consolidated=False)
    steps = store.open_archive(run).steps
    assert ds.induction_score.dims == ("step", "layer", "head")
    assert ds.sizes == {"step": len(steps), "layer": 2, "head": 4}
    np.testing.assert_array_equal(ds.step.values, steps)
    assert ds["layer"].values.tolist() == [0, 1] and ds["head"].values.tolist() == [0, 1, 2, 3]
    assert len(ds.induction_score.attrs["probe_hash"]) == 64
    best = ds.induction_score.sel(layer=1).max("head").values
    assert best[:5].max() < 0.1, "no induction head before training"
    assert best[-5:].min() > 0.4, "a layer-1 induction head after the phase change"
    # ablating the best induction head costs nothing before the phase change and loss after it
    scalars.compute(run, ["loss"])
    last = int(steps[-1])
    head = int(np.argmax(ds.induction_score.sel(step=last, layer=1).values))
    effect = store.open_scalars(run).ablated_loss.sel(layer=1, head=head) - store.open_scalars(run)["loss"]
    assert abs(float(effect[0])) < 0.01 and float(effect[-1]) > 0.05


def test_incremental_computes_only_missing_cells(tiny_run, copy_run):
    run = copy_run(tiny_run)
    first = scalars.compute(run, SUITE, steps="0-10")[0]
    assert first.checkpoints_computed == 2 and first.cells_computed == 6
    rest = scalars.compute(run, SUITE)[0]
    assert rest.checkpoints_computed == 5 and rest.cells_computed == 15
    again = scalars.compute(run, SUITE)[0]
    assert again.checkpoints_computed == 0 and again.cells_computed == 0
    one_go = copy_run(tiny_run, "one_go")
    scalars.compute(one_go, SUITE)
    for name in SUITE:
        np.testing.assert_array_equal(stored(run, name), stored(one_go, name))


def test_one_trace_for_all_checkpoints(tiny_run, copy_run):
    run = copy_run(tiny_run)
    report = scalars.compute(run, SUITE + ["loss", "logit_lens_loss"], block_size=1)[0]
    assert report.checkpoints_computed == 7 and report.traces == 1


@pytest.mark.slow
def test_stacked_checkpoint_blocks_equal_one_at_a_time(tiny_run, copy_run):
    a, b = copy_run(tiny_run, "a"), copy_run(tiny_run, "b")
    types = SUITE + ["ablated_loss_pattern_preserving", "reconstituted_induction_k", "direct_logit_attribution"]
    scalars.compute(a, types, block_size=1)
    report = scalars.compute(b, types, block_size=4)[0]  # blocks of 4, the last padded
    assert report.checkpoints_computed == 7
    for name in types:
        np.testing.assert_allclose(stored(a, name), stored(b, name), atol=1e-5, equal_nan=True)


def test_killed_compute_reruns_to_the_uninterrupted_values(tiny_run, copy_run):
    reference = copy_run(tiny_run, "reference")
    scalars.compute(reference, SUITE)
    run = copy_run(tiny_run, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "cli.app", "compute", str(run), "-q", "--block-size", "1",
                             *sum((["--type", t] for t in SUITE), [])], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if store.computed_mask(run, "ablated_loss").sum() >= 2:
                break
        except Exception:
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for name in SUITE:  # no partial cell: a cell marked computed holds its final value
        mask = store.computed_mask(run, name)
        values = stored(run, name)
        np.testing.assert_array_equal(values[mask], stored(reference, name)[mask])
        assert np.isnan(values[~mask]).all()
    res = cli("compute", str(run), "-q", *sum((["--type", t] for t in SUITE), []))
    assert res.returncode == 0, res.stderr
    for name in SUITE:
        np.testing.assert_array_equal(stored(run, name), stored(reference, name))


def test_unknown_type_suggests_names_and_leaves_results(tiny_run, copy_run):
    run = copy_run(tiny_run)
    scalars.compute(run, ["induction_score"])
    before = stored(run, "induction_score")
    res = cli("compute", str(run), "--type", "inductoin_score")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "induction_score" in res.stderr
    np.testing.assert_array_equal(stored(run, "induction_score"), before)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--type", "loss", "--steps", "15"], "step 15 is not a committed checkpoint"),
        pytest.param(["--type", "loss", "--steps", "0-x"], "bad --steps spec", marks=pytest.mark.slow),
        pytest.param(["--type", "icl_accuracy"], "needs a sequence classifier", marks=pytest.mark.slow),
        ([], "no types requested"),
    ],
)
def test_bad_compute_requests(tiny_run, copy_run, args, message):
    run = copy_run(tiny_run)
    res = cli("compute", str(run), *args)
    assert res.returncode == 2, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_not_a_run_and_empty_run(tmp_path):
    res = cli("compute", str(tmp_path), "--type", "loss")
    assert res.returncode == 2 and "not run directories" in res.stderr
    store.write_run_json(tmp_path / "empty", {"model": {"n_layers": 1}})
    res = cli("compute", str(tmp_path / "empty"), "--type", "loss")
    assert res.returncode == 2 and "Traceback" not in res.stderr


PLUGIN = '''
import jax.numpy as jnp
from scalars import register

@register("mean_bos_attention", dims=("layer", "head"), probe="repeated_tokens",
          description="mean attention to the BOS position")
def mean_bos_attention(model, probe, clean, ctx):
    return jnp.stack([out["attn_output"]["pattern"][..., 0].mean((0, 2)) for out in clean["layer_outputs"]])
'''


def test_plugin_type_through_the_cli(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    plugin = tmp_path / "my_types.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    res = cli("compute", str(run), "--plugin", str(plugin), "--type", "mean_bos_attention", "-q")
    assert res.returncode == 0, res.stderr
    values = stored(run, "mean_bos_attention")
    assert values.shape == (7, 2, 2) and np.all((values > 0) & (values <= 1))
    listed = cli("types", "--plugin", str(plugin))
    assert "mean_bos_attention" in listed.stdout


@pytest.mark.parametrize(
    "body, message",
    [
        ("raise RuntimeError('boom')", "boom"),
        ("return jnp.zeros((3,))", "returned shape (3,)"),
    ],
)
def test_bad_plugins_leave_results_untouched(tiny_run, copy_run, tmp_path, body, message):
    run = copy_run(tiny_run)
    scalars.compute(run, ["loss"])
    before = stored(run, "loss")
    plugin = tmp_path / "bad.py"
    plugin.write_text(textwrap.dedent(f'''
        import jax.numpy as jnp
        from scalars import register

        @register("bad_type", dims=("layer",), probe="repeated_tokens", description="broken")
        def bad_type(model, probe, clean, ctx):
            {body}
    '''))
    res = cli("compute", str(run), "--plugin", str(plugin), "--type", "bad_type", "--type", "loss", "--force")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert message in res.stderr, res.stderr
    np.testing.assert_array_equal(stored(run, "loss"), before)


def test_corrupted_checkpoint_fails_that_step_only(tiny_run, copy_run):
    run = copy_run(tiny_run)
    flip_byte(run, "*W_Q*", 2)
    res = cli("compute", str(run), "--type", "loss", "-q")
    assert res.returncode == 1
    assert "checkpoint 20" in res.stdout + res.stderr
    mask = store.computed_mask(run, "loss")
    assert mask.tolist() == [True, True, False, True, True, True, True]


def test_nonfinite_weights_give_nan_with_a_warning(tiny_run, copy_run):
    run = copy_run(tiny_run)
    reader = store.open_archive(run)
    leaves = reader.load(60)
    leaves["W_U"] = np.full_like(leaves["W_U"], np.nan)
    writer = store.ArchiveWriter(run)
    writer.truncate_after(50)
    writer.write_checkpoint(60, leaves)
    report = scalars.compute(run, ["loss"])[0]
    assert any("non-finite" in w and "60" in w for w in report.warnings)
    values = stored(run, "loss")
    assert np.isnan(values[-1]) and np.isfinite(values[:-1]).all()


def test_all_types_build_each_probe_once_per_request(tiny_run, copy_run):
    """`--all` plans some 40 types over a handful of probes: each probe is built once, not once per type."""
    built = []

    def counting(name, *args, **kwargs):
        built.append(name)
        return scalars.engine.build_run_probe(name, *args, **kwargs)

    plans = scalars.plan(copy_run(tiny_run), all_types=True, build_probe=counting)
    n_types = len(plans[0].types)
    assert n_types > 20
    assert built and sorted(built) == sorted(set(built)), built  # no probe built twice
    assert {p.name for p in plans[0].probes.values() if p is not None} <= set(built)


def test_the_standard_set_names_the_demo_types(tiny_run, copy_run):
    import scalars

    run = copy_run(tiny_run)
    res = cli("compute", str(run), "--type", "standard", "-q")
    assert res.returncode == 0, res.stderr
    assert set(scalars.registry.TYPE_SETS["standard"]) <= set(store.open_scalars(run).data_vars)
    assert scalars.compute(run, ["standard", "loss"])[0].cells_computed == 0  # a set and one of its types: once each
