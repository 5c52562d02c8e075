"""Sharp edges of `scalars compute`: a LAPACK type beside a probe type (once a deadlock), the stall
watchdog, `--force` resetting only the cells it recomputes, failures under `--force` keeping stored
cells, and plugin definitions fingerprinted so that cells of two definitions are never mixed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import scalars
import store
from scalars.engine._run import pool_blocking_kernels
from scalars.registry import code_fingerprint

EIG_PLUGIN = '''
import jax.numpy as jnp
import scalars

@scalars.register("ov_eig", dims=("layer", "head"), probe=None, description="max |eig| of W_E W_V W_O W_U")
def ov_eig(model, probe, clean, ctx):
    rows = []
    for blk in model.blocks:
        a = blk.attn
        m = jnp.einsum("vd,hde,hef,fw->hvw", model.embed.W_E, a.W_V, a.W_O, model.unembed_matrix)
        rows.append(jnp.abs(jnp.linalg.eigvals(m)).max(-1))
    return jnp.stack(rows)

@scalars.register("pattern_eig", dims=("layer", "head"), probe="repeated_tokens", description="max |eig| of patterns")
def pattern_eig(model, probe, clean, ctx):
    return jnp.stack([jnp.abs(jnp.linalg.eigvals(o["attn_output"]["pattern"].mean(0))).max(-1)
                      for o in clean["layer_outputs"]])
'''


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def tree_hash(folder: Path) -> str:
    """One checksum over every file's path and bytes below `folder`."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------- the hang


@pytest.mark.slow
def test_a_lapack_type_beside_a_probe_type_finishes(tiny_run, copy_run, tmp_path):
    """Two compute streams each running a LAPACK kernel that waits on XLA's intra-op pool used to hold
    every pool thread forever (0% CPU, no output); such programs now run in one stream."""
    run = copy_run(tiny_run)
    plugin = write(tmp_path / "eig.py", EIG_PLUGIN)
    try:
        res = cli("compute", str(run), "--plugin", str(plugin), "--type", "ov_eig", "--type", "pattern_eig",
                  "--type", "induction_score", "-q", timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("compute with a LAPACK type beside a probe type hung")
    assert res.returncode == 0, res.stderr
    ds = store.open_scalars(run)
    n = len(store.open_archive(run).steps)
    for name in ("ov_eig", "pattern_eig", "induction_score"):
        assert np.isfinite(ds[name].values).all() and ds[name].sizes["step"] == n


def test_lapack_kernels_are_detected_in_the_program():
    import jax
    import jax.numpy as jnp

    lowered = jax.jit(lambda a: jnp.linalg.eigvals(a) + jnp.linalg.svd(a)[1]).lower(jnp.ones((2, 3, 3)))
    assert pool_blocking_kernels(lowered) == ["lapack_sgeev_ffi", "lapack_sgesdd_ffi"]
    assert pool_blocking_kernels(jax.jit(lambda a: a @ a).lower(jnp.ones((3, 3)))) == []


STUCK_PLUGIN = '''
import time
import jax, jax.numpy as jnp
import scalars

def _wait_forever(x):
    time.sleep(3600)
    return x

@scalars.register("stuck_score", dims=("layer",), probe=None, description="waits on a host callback forever")
def stuck_score(model, probe, clean, ctx):
    x = jnp.zeros((len(model.blocks),), jnp.float32)
    return jax.pure_callback(_wait_forever, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
'''


@pytest.mark.slow
def test_a_stalled_compute_names_what_it_ran_and_exits(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    assert cli("compute", str(run), "--type", "induction_score", "-q").returncode == 0
    before = store.open_scalars(run).induction_score.values
    plugin = write(tmp_path / "stuck.py", STUCK_PLUGIN)
    res = cli("compute", str(run), "--plugin", str(plugin), "--type", "stuck_score", "--type", "induction_score",
              "--force", "--stall-timeout", "3", "-q", timeout=120)
    assert res.returncode == 3, (res.stdout, res.stderr)
    msg = res.stderr.strip()
    assert "Traceback" not in msg and len(msg.splitlines()) == 1, msg
    assert "no progress for 3s" in msg and "stuck_score" in msg and "step(s) 0" in msg
    ds = store.open_scalars(run)
    np.testing.assert_array_equal(ds.induction_score.values, before)  # stored cells kept
    assert not store.computed_mask(run, "stuck_score").any()  # nothing half-written


# ------------------------------------------------------------------------------- --force


def test_force_with_steps_resets_only_the_cells_it_recomputes(tiny_run, copy_run):
    run = copy_run(tiny_run)
    steps = store.open_archive(run).steps
    scalars.compute(run, ["induction_score", "prev_token_score"])
    before = store.open_scalars(run)
    rep = scalars.compute(run, ["induction_score"], steps="20-30", force=True)[0]
    assert rep.cells_computed == 2 and not rep.warnings
    after = store.open_scalars(run)
    assert store.computed_mask(run, "induction_score").all()
    assert after.induction_score.sizes["step"] == len(steps)
    np.testing.assert_array_equal(after.induction_score.values, before.induction_score.values)
    np.testing.assert_array_equal(after.prev_token_score.values, before.prev_token_score.values)


FAILING_PLUGIN = '''
import equinox as eqx
import jax.numpy as jnp
import scalars

@scalars.register("fragile_score", dims=("layer",), probe=None, description="fails when told to",
                  version={version})
def fragile_score(model, probe, clean, ctx):
    v = jnp.stack([jnp.abs(b.attn.W_O).mean() for b in model.blocks])
    return eqx.error_if(v, {fail}, "fragile_score refuses these weights")
'''


def test_a_type_that_fails_under_force_keeps_its_stored_cells(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    ok = write(tmp_path / "ok.py", FAILING_PLUGIN.format(version=1, fail="v < 0"))
    assert cli("compute", str(run), "--plugin", str(ok), "--type", "fragile_score", "-q").returncode == 0
    before, files = store.open_scalars(run).fragile_score.values, tree_hash(run / "scalars.zarr")
    for version in (1, 2):  # the same definition (in place) and a new one (a staged replacement)
        bad = write(tmp_path / f"bad{version}.py", FAILING_PLUGIN.format(version=version, fail="v >= 0"))
        res = cli("compute", str(run), "--plugin", str(bad), "--type", "fragile_score", "--force", "-q")
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert "fragile_score" in res.stderr
        np.testing.assert_array_equal(store.open_scalars(run).fragile_score.values, before)
        assert store.computed_mask(run, "fragile_score").all()
        assert tree_hash(run / "scalars.zarr") == files
        assert store.verify_scalars(run) == []


# ------------------------------------------------------------------------------- fingerprints

SCORE_PLUGIN = '''
import jax.numpy as jnp
import scalars

@scalars.register("w_o_norm", dims=("layer",), probe=None, description="mean |W_O| per layer"{version})
def w_o_norm(model, probe, clean, ctx):
    return jnp.stack([jnp.abs(b.attn.W_O).mean() * {scale} for b in model.blocks])
'''


@pytest.mark.slow
def test_changed_plugin_code_is_refused_then_replaced_whole(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    v1 = write(tmp_path / "v1.py", SCORE_PLUGIN.format(version="", scale="1.0"))
    assert cli("compute", str(run), "--plugin", str(v1), "--type", "w_o_norm", "-q").returncode == 0
    one = store.open_scalars(run).w_o_norm.values
    # a comment or a blank line is not a new definition
    same = write(tmp_path / "same.py", SCORE_PLUGIN.format(version="", scale="1.0").replace(
        "def w_o_norm", "# the same code\n\ndef w_o_norm"))
    assert cli("compute", str(run), "--plugin", str(same), "--type", "w_o_norm", "-q").returncode == 0
    v2 = write(tmp_path / "v2.py", SCORE_PLUGIN.format(version="", scale="2.0"))
    res = cli("compute", str(run), "--plugin", str(v2), "--type", "w_o_norm", "-q")
    assert res.returncode == 2
    msg = res.stderr.strip()
    assert "w_o_norm" in msg and "another definition" in msg and "--force" in msg and "probe" not in msg, msg
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    np.testing.assert_array_equal(store.open_scalars(run).w_o_norm.values, one)
    # --force on a part of the steps: the new definition replaces the variable; old cells are dropped, not mixed
    res = cli("compute", str(run), "--plugin", str(v2), "--type", "w_o_norm", "--force", "--steps", "0-20")
    assert res.returncode == 0, res.stderr
    assert "definition changed" in res.stdout and "dropped" in res.stdout
    mask = store.computed_mask(run, "w_o_norm")
    assert mask.tolist() == [s <= 20 for s in store.open_archive(run).steps]
    np.testing.assert_allclose(store.open_scalars(run).w_o_norm.values[mask], 2 * one[mask], rtol=1e-6)
    assert store.verify_scalars(run) == []


@pytest.mark.slow
def test_an_explicit_version_overrides_the_code_fingerprint(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    v1 = write(tmp_path / "v1.py", SCORE_PLUGIN.format(version=", version=3", scale="1.0"))
    assert cli("compute", str(run), "--plugin", str(v1), "--type", "w_o_norm", "-q").returncode == 0
    edited = write(tmp_path / "edited.py", SCORE_PLUGIN.format(version=", version=3", scale="1.0 + 0.0"))
    assert cli("compute", str(run), "--plugin", str(edited), "--type", "w_o_norm", "-q").returncode == 0
    bumped = write(tmp_path / "bumped.py", SCORE_PLUGIN.format(version=", version=4", scale="1.0"))
    res = cli("compute", str(run), "--plugin", str(bumped), "--type", "w_o_norm", "-q")
    assert res.returncode == 2 and "version 3, the registered type is version 4" in res.stderr
    assert "probe" not in res.stderr


def test_code_fingerprint_ignores_layout_and_sees_code():
    ns: dict = {}
    exec("def f(x):\n    return x + 1\n", ns)
    a = code_fingerprint(ns["f"])  # no source file: the bytecode is fingerprinted
    exec("def f(x):\n    return x + 2\n", ns)
    assert code_fingerprint(ns["f"]) != a
    assert all(t.fingerprint is None for t in scalars.list_types())  # built-ins are versioned


# ------------------------------------------------------------------------------- store level


def _spec(name="s", attrs=None):
    return store.VariableSpec(name, ("layer",), {"layer": np.arange(2)}, attrs or {"definition": "a"})


def test_a_swap_cut_short_is_finished_by_the_next_writer(tmp_path):
    from store import _zarr_io as zio
    from store.scalars_store import STAGED_PREFIX, _root

    run = tmp_path / "run"
    run.mkdir()
    steps = [0, 10, 20]
    store.ensure_variables(run, [_spec()], steps)
    store.write_cells(run, "s", steps, np.ones((3, 2)))
    targets = store.ensure_variables(run, [_spec(attrs={"definition": "b"})], steps, force=True)
    assert targets == {"s": STAGED_PREFIX + "s"}
    np.testing.assert_array_equal(store.open_scalars(run).s.values, np.ones((3, 2)))  # staged copy hidden
    store.write_cells(run, targets["s"], [10], np.full((1, 2), 2.0))
    # a crash right after the old mask was deleted (the first step of the swap)
    group = zio.open_group(_root(run), "r+")
    group["computed__" + STAGED_PREFIX + "s"].attrs.update({"swap_pending": True})
    zio.delete_node(group, "computed__s")
    assert np.isnan(store.open_scalars(run).s.values).all()  # no cell of either definition shows meanwhile
    store.ensure_variables(run, [_spec(attrs={"definition": "b"})], steps)  # the next writer finishes the swap
    ds = store.open_scalars(run)
    assert ds.s.attrs["definition"] == "b"
    np.testing.assert_array_equal(ds.s.values, [[np.nan, np.nan], [2, 2], [np.nan, np.nan]])
    assert not any(k.startswith(STAGED_PREFIX) or "__" + STAGED_PREFIX in k
                   for k in zio.list_arrays(zio.open_group(_root(run))))


def test_discarded_replacement_leaves_the_variable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    store.ensure_variables(run, [_spec()], [0, 10])
    store.write_cells(run, "s", [0, 10], np.ones((2, 2)))
    targets = store.ensure_variables(run, [_spec(attrs={"definition": "b"})], [0, 10], force=True)
    store.write_cells(run, targets["s"], [0], np.zeros((1, 2)))
    store.discard_replacements(run, targets)
    ds = store.open_scalars(run)
    assert ds.s.attrs["definition"] == "a"
    np.testing.assert_array_equal(ds.s.values, np.ones((2, 2)))
    assert store.commit_replacements(run, {"s": "s"}) == {}
