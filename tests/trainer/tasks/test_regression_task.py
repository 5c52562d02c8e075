"""In-context linear regression: the task, its Bayes baselines, the regression head, the preset,
training-time evaluations and the regression derived scalars."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scalars
import store
from trainer.config import resolve_config
from trainer.model import ModelConfig, build_model, regression_predictions, regression_tokens
from trainer.tasks import (
    RegressionTaskConfig,
    dmmse_predictions,
    regression_eval_batch,
    ridge_predictions,
    sample_batch,
    task_pool,
)
from trainer.tasks import build_task


# -- references, written independently of the implementation --------------------------------------
def ridge_reference(xs, ys, noise_var):
    """Per sequence and position: the Gaussian posterior mean, dual (kernel) form X^T (X X^T + s I)^-1 y."""
    B, K, D = xs.shape
    out = np.zeros((B, K))
    for b in range(B):
        for k in range(1, K):
            X, y = xs[b, :k].astype(np.float64), ys[b, :k].astype(np.float64)
            w = X.T @ np.linalg.inv(X @ X.T + noise_var * np.eye(k)) @ y
            out[b, k] = w @ xs[b, k]
    return out


def dmmse_reference(xs, ys, pool, noise_var):
    """Per sequence, position and task: Gaussian likelihood of the context, normalised with logsumexp."""
    B, K, _ = xs.shape
    out = np.zeros((B, K))
    for b in range(B):
        for k in range(K):
            loglik = np.array([-sum((ys[b, j] - w @ xs[b, j]) ** 2 for j in range(k)) / (2 * noise_var) for w in pool])
            post = np.exp(loglik - np.logaddexp.reduce(loglik))
            out[b, k] = sum(p * (w @ xs[b, k]) for p, w in zip(post, pool))
    return out


# -- task and baselines -----------------------------------------------------------------------------
def test_config_parses_task_diversity_and_rejects_bad_values():
    assert RegressionTaskConfig(n_tasks="inf").n_tasks is None
    assert RegressionTaskConfig(n_tasks=None).n_tasks is None
    assert RegressionTaskConfig(n_tasks=64).n_tasks == 64
    with pytest.raises(ValueError, match="task.n_tasks must be a positive integer or 'inf'"):
        RegressionTaskConfig(n_tasks=0)
    with pytest.raises(ValueError, match="task.noise_var must be a non-negative number"):
        RegressionTaskConfig(noise_var=-1.0)
    with pytest.raises(ValueError, match="task.context_len must be a positive integer"):
        RegressionTaskConfig(context_len=0)


def test_sampler_draws_pool_tasks_and_noisy_linear_labels():
    cfg = RegressionTaskConfig(n_dims=3, context_len=64, n_tasks=4, noise_var=0.25, task_seed=7)
    draw = jax.jit(lambda k: sample_batch(cfg, k, 256, with_info=True))
    batch = draw(jax.random.key(1))
    pool = task_pool(cfg)
    assert batch["xs"].shape == (256, 64, 3) and batch["ys"].shape == (256, 64)
    idx = np.asarray(batch["task_index"])
    assert set(idx.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(np.asarray(batch["ws"]), pool[idx])
    resid = np.asarray(batch["ys"]) - np.einsum("bkd,bd->bk", np.asarray(batch["xs"]), pool[idx])
    assert abs(resid.var() - 0.25) < 0.02  # 16k residuals: the noise variance
    again = draw(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(again["ys"]), np.asarray(batch["ys"]))
    fresh = sample_batch(RegressionTaskConfig(n_dims=3, n_tasks=None), jax.random.key(2), 512, with_info=True)
    assert np.all(np.asarray(fresh["task_index"]) == -1) and len(np.unique(np.asarray(fresh["ws"])[:, 0])) == 512


def test_baselines_equal_closed_form_references():
    rng = np.random.default_rng(0)
    xs, ys, pool = rng.normal(size=(5, 7, 3)), rng.normal(size=(5, 7)), rng.normal(size=(6, 3))
    np.testing.assert_allclose(ridge_predictions(xs, ys, 0.3), ridge_reference(xs, ys, 0.3), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dmmse_predictions(xs, ys, pool, 0.3), dmmse_reference(xs, ys, pool, 0.3), rtol=1e-9,
                               atol=1e-12)
    # known cases: empty context predicts the prior mean 0 (ridge) or the pool average (dMMSE)
    assert np.all(ridge_predictions(xs, ys, 0.3)[:, 0] == 0)
    np.testing.assert_allclose(dmmse_predictions(xs, ys, pool, 0.3)[:, 0], xs[:, 0] @ pool.mean(0))
    # a one-task pool is always that task; noise-free ridge recovers w once k >= D pairs are seen
    np.testing.assert_allclose(dmmse_predictions(xs, ys, pool[:1], 0.3), xs @ pool[0], rtol=1e-12)
    w = rng.normal(size=3)
    exact = ridge_predictions(xs, xs @ w, 0.0)
    np.testing.assert_allclose(exact[:, 3:], (xs @ w)[:, 3:], rtol=1e-8, atol=1e-10)


def test_eval_batches_carry_the_baselines_and_are_deterministic():
    cfg = RegressionTaskConfig(n_dims=2, context_len=5, n_tasks=3, noise_var=0.1)
    a, b = regression_eval_batch(cfg, 3, 8, "pool"), regression_eval_batch(cfg, 3, 8, "pool")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_allclose(a["dmmse"], dmmse_reference(a["xs"], a["ys"], task_pool(cfg), 0.1), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(a["ridge"], ridge_reference(a["xs"], a["ys"], 0.1), rtol=1e-5, atol=1e-6)
    gauss = regression_eval_batch(RegressionTaskConfig(n_dims=2, context_len=5), 3, 8, "gauss")
    np.testing.assert_array_equal(gauss["dmmse"], gauss["ridge"])  # infinite diversity: dMMSE is ridge


# -- model ----------------------------------------------------------------------------------------
def test_regression_head_reads_tokens_and_never_sees_its_own_target():
    xs, ys = jnp.arange(6.0).reshape(3, 2), jnp.array([10.0, 20.0, 30.0])
    np.testing.assert_array_equal(regression_tokens(xs, ys), [[0, 1, 0], [0, 0, 10], [2, 3, 0], [0, 0, 20], [4, 5, 0]])
    cfg = ModelConfig(head="regression", d_in=3, n_layers=2, d_model=16, n_heads=2, n_ctx=8)
    model = build_model(cfg, seed=1)
    rng = np.random.default_rng(0)
    xs, ys = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), jnp.asarray(rng.normal(size=3), jnp.float32)
    forward = jax.jit(lambda x, y: model({"xs": x, "ys": y}))
    out = forward(xs, ys)
    assert out.shape == (5, 1) and cfg.n_outputs == 1
    pred = regression_predictions(out)
    for k in range(3):  # changing y_k moves no prediction up to and including position k
        moved = regression_predictions(forward(xs, ys.at[k].add(5.0)))
        np.testing.assert_array_equal(moved[:k + 1], pred[:k + 1])
        if k < 2:
            assert not np.allclose(moved[k + 1:], pred[k + 1:])
    with pytest.raises(ValueError, match="a regression model needs model.d_in"):
        ModelConfig(head="regression", d_in=1)


def test_preset_task_diversity_via_set_and_bad_value():
    for value, want in (("1", 1), ("4", 4), ("64", 64), ("inf", None)):
        config = resolve_config("icl-regression", None, [f"task.n_tasks={value}"])
        task = build_task(config)
        assert task.cfg.n_tasks == want
        assert (task.model_config.head, task.model_config.d_in, task.model_config.n_layers) == ("regression", 5, 2)
        assert (task.model_config.n_heads, task.model_config.d_model, task.model_config.attn_only) == (4, 64, False)
        assert task.model_config.n_ctx >= 31 and task.cfg.context_len == 16 and task.cfg.n_dims == 4
    with pytest.raises(ValueError, match="task.n_tasks must be a positive integer or 'inf'"):
        resolve_config("icl-regression", None, ["task.n_tasks=0"])


# -- training and the derived scalars --------------------------------------------------------------
@pytest.fixture
def memorizing_run(memorizing_regression_run):
    """M = 1 (conftest): the single task is learned in weights within 90 steps."""
    return memorizing_regression_run


def test_training_logs_loss_by_position_and_baseline_distances(memorizing_run):
    m = store.open_metrics(memorizing_run)
    names = set(m.data_vars)
    for s in ("gauss", "pool"):
        s = f"eval_{s}"
        assert {f"{s}_loss", f"{s}_delta_ridge", f"{s}_delta_dmmse", f"{s}_ridge_loss", f"{s}_dmmse_loss"} <= names
        assert {f"{s}_loss_pos{k:02d}" for k in range(8)} <= names
    first, last = (m.eval_gauss_delta_dmmse.dropna("step").values[i] for i in (0, -1))
    ridge_last = float(m.eval_gauss_delta_ridge.dropna("step").values[-1])
    assert last < 0.05 * first and last < 0.02 and ridge_last > 50 * last  # memorized: dMMSE, not ridge
    assert float(m.train_loss.dropna("step").values[0]) > 0.1  # the training loss column is not an eval's


def test_regression_types_through_the_engine(memorizing_run, copy_run):
    run = copy_run(memorizing_run)
    report = scalars.compute(run, ["icl_regression_loss", "delta_ridge", "delta_dmmse"])[0]
    assert report.cells_computed == 3 * 4 and not report.warnings
    ds = store.open_scalars(run)
    for name in ("icl_regression_loss", "delta_ridge", "delta_dmmse"):
        assert ds[name].dims == ("step", "pos") and ds[name].attrs["probe"] == "regression"
    np.testing.assert_array_equal(ds.pos.values, np.arange(8))
    np.testing.assert_array_equal(ds.step.values, [0, 30, 60, 90])
    # the stored values equal a direct computation from the checkpoint and the probe's baselines
    info, config = scalars.engine.load_run_model_config(run)
    probe = scalars.engine.build_run_probe("regression", run, info, config)
    model = store.open_archive(run).load(90)
    from trainer.model import load_named_leaves

    model = load_named_leaves(build_model(config), model)
    pred = np.asarray(jax.vmap(lambda x, y: regression_predictions(model({"xs": x, "ys": y})))(
        probe.arrays["xs"], probe.arrays["ys"]))
    np.testing.assert_allclose(ds.delta_dmmse.sel(step=90).values, ((pred - probe.arrays["dmmse"]) ** 2).mean(0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds.icl_regression_loss.sel(step=90).values, ((pred - probe.arrays["ys"]) ** 2).mean(0),
                               rtol=1e-5, atol=1e-7)
    assert float(ds.delta_dmmse.sel(step=90).mean()) < 0.02 < float(ds.delta_ridge.sel(step=90).mean())
    # --all: every generic type reads the regression probe (loss = mean squared error); SGLD types are opt-in
    scalars.compute([str(run)], [], all_types=True, steps="90")
    ds = store.open_scalars(run)
    np.testing.assert_allclose(float(ds["loss"].sel(step=90)), float(ds.icl_regression_loss.sel(step=90).mean()),
                               rtol=1e-5)
    assert ds.ablated_loss.dims == ("step", "layer", "head") and np.isfinite(ds.ablated_loss.sel(step=90)).all()
    assert np.isfinite(ds.direct_logit_attribution.sel(step=90)).all() and "llc" not in ds


def test_regression_probes_from_the_run(memorizing_run):
    info, config = scalars.engine.load_run_model_config(memorizing_run)
    a = scalars.engine.build_run_probe("regression", memorizing_run, info, config)
    b = scalars.engine.build_run_probe("regression", memorizing_run, info, config)
    pool = scalars.engine.build_run_probe("regression_pool:batch=16", memorizing_run, info, config)
    assert a.content_hash == b.content_hash and a.kind == "regression" and a.batch_size == 512
    assert (a.seq_len, a.n_pos, pool.batch_size) == (15, 8, 16)
    w = task_pool(build_task(info["config"]).cfg)[0]
    np.testing.assert_allclose(pool.arrays["dmmse"], pool.arrays["xs"] @ w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="probe 'regresion' is not a probe name this run knows; for this regression model use regression, "
                       "regression_pool"):
        scalars.engine.build_run_probe("regresion", memorizing_run, info, config)
    with pytest.raises(ValueError, match="unknown regression_pool probe option"):
        scalars.engine.build_run_probe("regression_pool:T=3", memorizing_run, info, config)


def test_declared_shapes_of_regression_types_on_a_random_model():
    cfg = ModelConfig(head="regression", d_in=3, n_layers=2, d_model=16, n_heads=2, n_ctx=9)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(6, 5, 2)), rng.normal(size=(6, 5))
    from trainer.tasks import bayes_predictions

    probe = scalars.probes.from_regression_arrays(xs, ys, name="regression", **bayes_predictions(xs, ys, None, 0.1))
    names = [t.name for t in scalars.list_types() if t.requires == "regression"]
    assert set(names) == {"icl_regression_loss", "delta_ridge", "delta_dmmse"}
    out = scalars.make_compute_fn(names, cfg, probe)(eqx.filter(build_model(cfg), eqx.is_array))
    for name in names:
        assert out[name].shape == scalars.registry.type_shape(name, cfg, probe) == (5,)
    np.testing.assert_allclose(out["delta_ridge"], out["delta_dmmse"])  # no pool: dMMSE is ridge
    model = build_model(cfg)
    pred = np.asarray(jax.vmap(lambda x, y: regression_predictions(model({"xs": x, "ys": y})))(
        jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32)))
    assert math.isclose(float(out["delta_ridge"][0]), float(np.mean(pred[:, 0] ** 2)), rel_tol=1e-5)  # ridge(0) = 0
