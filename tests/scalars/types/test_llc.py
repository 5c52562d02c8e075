"""Local learning coefficient: known answers of the SGLD estimator, the llc / rllc / sgld_diagnostics
types through the engine, determinism, divergence handling and bad input."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scalars
import store
from scalars.types._llc import SGLD_OPTIONS, _head_loss_fn, probe_loss_fn
from scalars.interventions._sgld import STATS, SGLDSettings, chain_diagnostics, llc_from_losses, sgld_losses
from trainer.model import ModelConfig, build_model

CHEAP = {"chains": 2, "draws": 20, "burn_in": 5}  # a small budget for engine plumbing tests


def settings(n, **overrides):
    return SGLDSettings.from_options({**SGLD_OPTIONS, **overrides}, n)


def estimate(loss_fn, w_star, n, s):
    init, losses = jax.jit(lambda w: sgld_losses(loss_fn, w, n, s))(w_star)
    return float(llc_from_losses(init, losses, s.nbeta(n), int(np.size(w_star)), s.diverge_factor))


def ula_gaussian_llc(curvatures, nbeta, gamma, eps):
    """The exact expectation of the estimator for L = 1/2 sum_j a_j x_j^2: unadjusted Langevin with
    drift -(eps/2) p_j x, p_j = n beta a_j + gamma, has stationary variance 1 / (p_j (1 - eps p_j / 4))."""
    p = nbeta * curvatures + gamma
    return float(np.sum(nbeta * curvatures / (2 * p * (1 - eps * p / 4))))


# -- known answers ----------------------------------------------------------------------------------
def test_nondegenerate_quadratic_gives_half_the_dimension_with_the_default_budget():
    """d = 100, curvatures n beta a_j in [1400, 2400]: with the defaults (eps 1e-4, gamma 100, 4
    chains x 400 draws after 400 burn-in, minibatch 8 of n = 512) the localization bias (-gamma/p,
    about -5%) and the step-size bias (+eps p/4, about +5%) are computed exactly below."""
    n, d = 512, 100
    s = settings(n)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = (np.linspace(1500, 2500, d) - s.gamma) / s.nbeta(n)
    A = jnp.asarray(Q @ np.diag(a) @ Q.T, jnp.float32)
    w_star = jnp.asarray(rng.normal(size=d), jnp.float32)
    loss = lambda w, idx: 0.5 * (w - w_star) @ A @ (w - w_star) + 0.0 * idx.sum()  # noqa: E731
    est = estimate(loss, w_star, n, s)
    exact = ula_gaussian_llc(a, s.nbeta(n), s.gamma, s.step_size)
    assert abs(exact - d / 2) < 0.01 * d / 2
    assert abs(est - d / 2) < 0.1 * d / 2, est
    assert abs(est - exact) < 0.06 * exact, (est, exact)
    looped = estimate(loss, w_star, n, settings(n, chain_batching="map"))  # chains one after another
    assert abs(looped - est) < 1e-3 * est


def test_realizable_linear_regression_matches_the_exact_expectation_full_batch():
    """A data-dependent quadratic: L_n(w) = mean 1/2 (y - x.w)^2 over n = 2048 samples, w* the teacher."""
    n, d = 2048, 20
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d)) * math.sqrt(7.0)  # n beta x Hessian about 1900: biases as in the test above
    w_star = rng.normal(size=d)
    Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(X @ w_star, jnp.float32)
    loss = lambda w, idx: 0.5 * jnp.mean((yj[idx] - Xj[idx] @ w) ** 2)  # noqa: E731
    s = settings(n, batch_size=None, chains=16)
    est = estimate(loss, jnp.asarray(w_star, jnp.float32), n, s)
    exact = ula_gaussian_llc(np.linalg.eigvalsh(X.T @ X / n), s.nbeta(n), s.gamma, s.step_size)
    assert abs(est - exact) < 0.08 * exact and abs(est - d / 2) < 0.1 * d / 2, (est, exact)


def quadrature_product_llc(N, gamma):
    """E[N (w1 w2)^2] under exp(-N (w1 w2)^2 - gamma |w|^2 / 2): w2 given w1 is Gaussian with
    precision 2 N w1^2 + gamma, leaving a 1-D integral over w1."""
    w1 = np.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), 400_001)
    prec = 2 * N * w1**2 + gamma
    weight = np.exp(-gamma * w1**2 / 2) / np.sqrt(prec)
    return float(np.sum(weight * N * w1**2 / prec) / np.sum(weight))


def test_degenerate_product_potential_gives_a_smaller_value_as_theory_says():
    """K = a (w1 w2)^2 (learning coefficient 1/2) against a (w1^2 + w2^2) (coefficient 1), at
    n beta a = 1000, gamma = 10: the finite-temperature expectations come from quadrature."""
    n, N, gamma = 1000, 1000.0, 10.0
    s = settings(n, step_size=2e-5, gamma=gamma, beta=1.0, chains=16, draws=40_000, burn_in=10_000, batch_size=None)
    a = N / s.nbeta(n)
    degenerate = estimate(lambda w, idx: a * (w[0] * w[1]) ** 2, jnp.zeros(2), n, s)
    regular = estimate(lambda w, idx: a * (w[0] ** 2 + w[1] ** 2), jnp.zeros(2), n, s)
    expected = quadrature_product_llc(N, gamma)
    assert expected < 0.5 and abs(regular - 2 * N / (2 * N + gamma)) < 0.05
    assert abs(degenerate - expected) < 0.15 * expected, (degenerate, expected)
    assert degenerate < 0.5 * regular


# -- the types ----------------------------------------------------------------------------------------
@pytest.fixture
def regression_run(memorizing_regression_run):
    """A small M = 1 regression run (conftest; near a minimum after 90 steps): 4 checkpoints."""
    return memorizing_regression_run


SGLD_TYPES = ["llc", "rllc", "sgld_diagnostics"]


def compute_sgld_types(src, dst):
    import shutil

    shutil.copytree(src, dst)
    report = scalars.compute(dst, SGLD_TYPES, options={name: CHEAP for name in SGLD_TYPES})[0]
    return dst, report


@pytest.fixture(scope="module")
def computed(memorizing_regression_run, tmp_path_factory):
    """The regression run with llc, rllc and sgld_diagnostics computed for every checkpoint."""
    return compute_sgld_types(memorizing_regression_run, tmp_path_factory.mktemp("computed") / "run")


@pytest.mark.slow
def test_llc_rllc_and_diagnostics_through_the_engine(computed):
    run, report = computed
    assert report.cells_computed == 12 and not report.failed_steps
    ds = store.open_scalars(run)
    assert ds.llc.dims == ("step",) and ds.rllc.dims == ("step", "layer", "head")
    assert ds.sgld_diagnostics.dims == ("step", "stat") and list(ds.stat.values) == list(STATS)
    np.testing.assert_array_equal(ds.step.values, [0, 30, 60, 90])
    assert ds.rllc.shape == (4, 1, 2) and np.isfinite(ds.rllc.values).all() and np.isfinite(ds.llc.values).all()
    for name in ("llc", "rllc", "sgld_diagnostics"):  # every hyperparameter is in the attrs
        stored = json.loads(ds[name].attrs["options"])
        assert stored == {**SGLD_OPTIONS, **CHEAP} and ds[name].attrs["probe"] == "regression_pool"
    diag = ds.sgld_diagnostics.sel(step=90)
    assert float(diag.sel(stat="diverged_chains")) == 0 and float(diag.sel(stat="status")) in (0, 3, 4)
    unsettled = [int(s) for s in ds.step.values if float(ds.sgld_diagnostics.sel(step=s, stat="status")) == 4]
    warned = [w for w in report.warnings if "SGLD status 4: not settled" in w and "R-hat" in w]
    assert len(warned) == len(unsettled)  # each unsettled checkpoint is named in a warning (CHEAP: 2 x 20 draws)
    np.testing.assert_allclose(float(diag.sel(stat="nbeta")), 512 / math.log(512), rtol=1e-6)
    # llc and sgld_diagnostics share their chains: mean of the chain estimates = llc
    lo, hi = float(diag.sel(stat="chain_llc_min")), float(diag.sel(stat="chain_llc_max"))
    assert lo <= float(ds.llc.sel(step=90)) <= hi
    # other options on stored cells are refused, nothing changes
    before = ds.llc.values.copy()
    with pytest.raises(store.StoreError, match="'llc' is stored with options .* recompute it with force=True"):
        scalars.compute(run, ["llc"], steps="90", force=False, options={"llc": {**CHEAP, "step_size": 3e-4}})
    np.testing.assert_array_equal(store.open_scalars(run).llc.values, before)


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_seeds_spread(regression_run, computed, tmp_path):
    again, _ = compute_sgld_types(regression_run, tmp_path / "again")  # a second, independent compute
    first, second = store.open_scalars(computed[0]), store.open_scalars(again)
    for name in SGLD_TYPES:
        np.testing.assert_array_equal(first[name].values, second[name].values)  # bit-identical
    # other seeds: the same estimator on the same loss, one compiled program with the key as input
    info, config = scalars.engine.load_run_model_config(regression_run)
    probe = scalars.engine.build_run_probe("regression_pool", regression_run, info, config)  # the training distribution
    from trainer.model import load_named_leaves

    model = load_named_leaves(build_model(config), store.open_archive(regression_run).load(90))
    s = settings(probe.batch_size)
    arrays = {k: jnp.asarray(v) for k, v in probe.arrays.items()}

    @jax.jit
    def llc_for(key):
        params, loss_fn = probe_loss_fn(model, probe.with_arrays(arrays))
        init, losses = sgld_losses(loss_fn, params, probe.batch_size, s, key=key)
        return llc_from_losses(init, losses, s.nbeta(probe.batch_size), 10**9, s.diverge_factor)

    values = [float(llc_for(jax.random.key(seed))) for seed in range(4)]
    mean, std = float(np.mean(values)), float(np.std(values))
    print(f"llc over seeds 0-3 at step 90 (default budget): {np.round(values, 2).tolist()}, mean {mean:.2f}, "
          f"std {std:.2f}")
    assert len(set(values)) == 4 and 0 < std < 0.3 * mean


def test_diverging_chains_store_nan_with_a_reason_and_warn(regression_run, copy_run):
    run = copy_run(regression_run)
    bad = {**CHEAP, "step_size": 1.0}
    report = scalars.compute(run, ["llc", "sgld_diagnostics"], steps="60,90", options={"llc": bad, "sgld_diagnostics": bad})[0]
    assert not report.failed_steps and report.cells_computed == 4
    ds = store.open_scalars(run, with_masks=True)
    assert np.isnan(ds.llc.sel(step=[60, 90]).values).all()
    assert ds["computed__llc"].sel(step=[60, 90]).values.all()  # computed, and NaN on purpose
    diag = ds.sgld_diagnostics.sel(step=90)
    assert float(diag.sel(stat="status")) == 1 and float(diag.sel(stat="diverged_chains")) == 2
    assert any("llc at step 90: the SGLD estimate is NaN" in w and "lower step_size (now 1.0)" in w
               for w in report.warnings)
    assert any("sgld_diagnostics at step 60: SGLD status 1: diverged chains" in w for w in report.warnings)


@pytest.mark.parametrize("option, value, message", [
    ("step_size", -1e-4, "SGLD option step_size must be positive, got -0.0001"),
    ("beta", 0.0, "SGLD option beta \\(inverse temperature\\) must be positive, got 0.0"),
    ("chains", 0, "SGLD option chains must be an integer >= 1, got 0"),
])
def test_bad_options_fail_clearly_and_store_nothing(regression_run, copy_run, option, value, message):
    run = copy_run(regression_run)
    with pytest.raises(ValueError, match=message):
        scalars.compute(run, ["llc"], options={"llc": {option: value}})
    assert not (run / "scalars.zarr").exists()


def test_cli_bad_options_are_one_line_errors(regression_run, copy_run):
    from typer.testing import CliRunner

    from cli.app import app

    run = copy_run(regression_run)
    cases = [(["--option", "llc.step_size=-1e-4"], "SGLD option step_size must be positive"),
             (["--option", "llc.beta=-2"], "SGLD option beta (inverse temperature) must be positive"),
             (["--option", "llc.chains=0"], "SGLD option chains must be an integer >= 1, got 0"),
             (["--option", "llc.chain=4"], "type 'llc' has no option(s) chain; its options are: batch_size"),
             (["--option", "llc-step=1"], "--option expects TYPE.KEY=VALUE"),
             (["--probe", "regression_pool:batch=3"], "batch_size=8 is larger than the probe (3 sequences)")]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["compute", str(run), "--type", "llc", "-q", *extra])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in " ".join(lines), result.output
        assert "Traceback" not in result.output
    assert not (run / "scalars.zarr").exists()


def test_probe_too_small_for_the_batch_fails_clearly(regression_run, copy_run):
    run = copy_run(regression_run)
    scalars.compute(run, ["loss"])
    before = store.open_scalars(run)["loss"].values.copy()
    with pytest.raises(ValueError, match=r"batch_size=8 is larger than the probe \(4 sequences\); use a batch_size <= 4"):
        scalars.compute(run, ["llc", "loss"], probe="regression_pool:batch=4")
    ds = store.open_scalars(run)
    assert "llc" not in ds and np.array_equal(ds["loss"].values, before, equal_nan=True)


# -- per-head refinement, other model heads, batching ---------------------------------------------
def random_model(config, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


LM_CFG = ModelConfig(n_layers=3, d_model=16, n_heads=2, vocab_size=20, n_ctx=16)


@pytest.mark.slow
def test_head_loss_reuses_the_prefix_and_equals_a_full_forward():
    model = random_model(LM_CFG, 0)
    probe = scalars.probes.repeated_tokens(seed=0, batch=6, T=5, vocab_size=20)
    clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
    params, full_loss = probe_loss_fn(model, probe)
    idx = jnp.array([0, 2, 5])
    for layer, head in ((0, 1), (2, 0)):
        names, head_loss = _head_loss_fn(model, probe, clean, layer)
        attn = model.blocks[layer].attn
        w_star = {n: getattr(attn, n)[head] for n in names}
        assert names == ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        np.testing.assert_allclose(head_loss(w_star, head, idx), full_loss(params, idx), rtol=1e-6)
        rng = np.random.default_rng(layer)
        moved = {n: v + 0.3 * jnp.asarray(rng.normal(size=v.shape), v.dtype) for n, v in w_star.items()}
        edited = eqx.tree_at(lambda m: [getattr(m.blocks[layer].attn, n) for n in names], model,
                             [getattr(attn, n).at[head].set(moved[n]) for n in names])
        ref_params, ref_loss = probe_loss_fn(edited, probe)
        np.testing.assert_allclose(head_loss(moved, head, idx), ref_loss(ref_params, idx), rtol=1e-5)
        assert abs(float(head_loss(moved, head, idx)) - float(full_loss(params, idx))) > 1e-4


@pytest.mark.slow
def test_llc_works_for_token_lms_and_classifiers_and_checkpoint_blocks():
    lm = ModelConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=20, n_ctx=16)
    probe = scalars.probes.repeated_tokens(seed=0, batch=16, T=5, vocab_size=20)
    params = eqx.filter(random_model(lm, 1, scale=0.1), eqx.is_array)
    out = scalars.make_compute_fn(["llc", "rllc"], lm, probe, options={"llc": CHEAP, "rllc": CHEAP})(params)
    assert out["rllc"].shape == (1, 2) and np.isfinite(out["rllc"]).all() and np.isfinite(out["llc"])
    cls = ModelConfig(head="classifier", d_in=6, n_labels=4, positional="rope", attn_only=True, n_layers=2,
                      d_model=16, n_heads=2, n_ctx=8)
    rng = np.random.default_rng(0)
    cprobe = scalars.probes.from_classifier_arrays(rng.normal(size=(16, 3, 6)), rng.integers(0, 4, size=(16, 3)), name="icl")
    models = [random_model(cls, s, scale=0.1) for s in (2, 3)]
    fn = scalars.make_compute_fn(["llc"], cls, cprobe, options={"llc": CHEAP})
    single = [float(fn(eqx.filter(m, eqx.is_array))["llc"]) for m in models]
    assert all(np.isfinite(single))
    block = scalars.engine.make_block_compute_fn(["llc"], cls, cprobe, options={"llc": CHEAP})(scalars.engine.stack_params(models))
    np.testing.assert_allclose(block["llc"], single, rtol=1e-3, atol=1e-3)  # checkpoints vmapped (the GPU path)


def test_sgld_types_are_opt_in_and_validate_their_dims():
    for name in ("llc", "rllc", "sgld_diagnostics"):
        dst = scalars.get_type(name)
        assert dst.opt_in and dst.requires is None and set(dst.dims) <= set(scalars.dims.TYPE_DIMS)
    from scalars.engine._plan import applicable_types

    assert not {"llc", "rllc", "sgld_diagnostics"} & set(applicable_types(LM_CFG))
    # the diagnostics of hand-made traces: one chain drifting upward, one flat
    losses = jnp.array([[1.0, 1.0, 2.0, 2.0], [1.5, 1.5, 1.5, 1.5]])
    stats = dict(zip(STATS, np.asarray(chain_diagnostics(jnp.asarray(1.0), losses, 10.0, 5, 10.0))))
    assert stats["max_drift"] == pytest.approx(10.0) and stats["mean_loss"] == pytest.approx(1.5)
    assert stats["chain_llc_min"] == pytest.approx(5.0) and stats["chain_llc_max"] == pytest.approx(5.0)
    assert stats["status"] == 4 and stats["diverged_chains"] == 0  # a drift of 10 on an llc of 5: not settled
    blown = jnp.array([[1.0, 2.0, jnp.inf, jnp.nan], [1.5, 1.5, 1.5, 1.5]])
    stats = dict(zip(STATS, np.asarray(chain_diagnostics(jnp.asarray(1.0), blown, 10.0, 5, 10.0))))
    assert stats["status"] == 1 and stats["diverged_chains"] == 1
    assert np.isnan(float(llc_from_losses(jnp.asarray(1.0), blown, 10.0, 5, 10.0)))


# -- end to end (slow) --------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_icl_regression_llc_and_rllc_over_every_checkpoint(tmp_path):
    """Train the icl-regression preset (M = infinity; about 1.5 min), compute llc and rllc with the
    default budget over its 21 checkpoints (a few minutes), plot them with `scalars plot`."""
    from typer.testing import CliRunner

    from cli.app import app
    from trainer.config import resolve_config
    from trainer.train import train

    run = tmp_path / "run"
    train(resolve_config("icl-regression"), run)
    report = scalars.compute(run, ["llc", "rllc", "sgld_diagnostics", "delta_ridge", "delta_dmmse"])[0]
    assert not report.failed_steps
    ds = store.open_scalars(run)
    assert ds.sizes["step"] >= 20 and ds.llc.dims == ("step",) and ds.rllc.dims == ("step", "layer", "head")
    assert ds.rllc.shape == (ds.sizes["step"], 2, 4)
    np.testing.assert_array_equal(ds["layer"].values, [0, 1])
    np.testing.assert_array_equal(ds["head"].values, [0, 1, 2, 3])
    assert np.isfinite(ds.llc.values).all() and np.isfinite(ds.rllc.values).all()
    assert json.loads(ds.rllc.attrs["options"]) == SGLD_OPTIONS
    delta = ds.delta_ridge.mean("pos").values
    assert delta[-1] < 0.3 * delta[0]  # infinite task diversity: the model approaches ridge regression
    assert ds.llc.values[-1] > ds.llc.values[0]
    runner = CliRunner()
    for name in ("llc", "rllc", "sgld_diagnostics"):
        out = tmp_path / f"{name}.png"
        result = runner.invoke(app, ["plot", str(run), "--type", name, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 10_000


@pytest.mark.slow
def test_llc_of_induction_tiny_rises_across_its_phase_change(trained_induction_tiny, copy_run):
    """Token LM: the llc (default budget, repeated_tokens probe) before and after the induction bump."""
    run = copy_run(trained_induction_tiny)
    scalars.compute(run, ["llc", "loss"], steps="0,1000,2000")
    ds = store.open_scalars(run)
    llc, loss = (ds[name].sel(step=[0, 1000, 2000]).values for name in ("llc", "loss"))
    assert np.isfinite(llc).all() and loss[-1] < loss[1] - 0.5  # the phase change happened in between
    assert llc[2] > 3 * llc[1] > 0


def _naive_split_rhat(x: np.ndarray) -> float:
    """Split R-hat written out from its textbook definition (BDA3 11.4), in float64."""
    n = x.shape[1] // 2
    parts = [c[:n] for c in x] + [c[x.shape[1] - n:] for c in x]
    means = np.array([p.mean() for p in parts])
    b = n * np.sum((means - means.mean()) ** 2) / (len(parts) - 1)
    w = np.mean([np.sum((p - p.mean()) ** 2) / (n - 1) for p in parts])
    return float(np.sqrt(((n - 1) / n * w + b / n) / w))


@pytest.mark.parametrize("case,status", [("settled", 0), ("disagree", 4), ("drift", 4), ("negative", 3)])
def test_status_names_unsettled_chains_by_rhat_and_drift(case, status):
    """Planted traces: 4 chains x 200 draws of noise (sd 0.05) around a level; nbeta 10, L(w*) = 1."""
    from scalars.interventions._sgld import split_rhat

    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal((4, 200))
    level = {"settled": np.full((4, 1), 1.5), "disagree": np.array([[1.3], [1.4], [1.6], [1.7]]),
             "drift": 1.2 + np.linspace(0, 0.6, 200)[None, :], "negative": np.full((4, 1), 0.9)}[case]
    losses = level + noise
    stats = dict(zip(STATS, np.asarray(chain_diagnostics(jnp.asarray(1.0), jnp.asarray(losses, jnp.float32),
                                                         10.0, 5, 1e6))))
    assert stats["status"] == status, stats
    assert stats["rhat"] == pytest.approx(_naive_split_rhat(losses), rel=1e-4)
    assert float(split_rhat(jnp.asarray(losses, jnp.float32))) == pytest.approx(_naive_split_rhat(losses), rel=1e-4)
    if case == "settled":
        assert stats["rhat"] < 1.01
    if case == "disagree":
        assert stats["rhat"] > 2
