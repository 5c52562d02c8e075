"""Activation, path and attribution patching on paired probes: known answers on the planted induction
circuit, fast == naive full-forward patching on random checkpoints, attribution vs exact on a
trained run, the end-to-end CLI over a phase change, and bad input."""

from __future__ import annotations

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scalars
import store
from scalars.probes._pairs import pair_from_repeated
from scalars.reference._patching import NAIVE_TYPES, NaivePatcher
from tests.scalars.test_scalars_planted import T, V, distinct_repeats, planted_model
from trainer.model import ModelConfig, build_model, load_named_leaves

PAIR_TYPES = [t.name for t in scalars.list_types() if t.probe == "default_pair"]
EXACT = ["patch_resid", "patch_head_output", "patch_head_pattern", "patch_head_value", "path_patch"]
ATTRIBUTION = ["attribution_patch_resid", "attribution_patch_head_output", "attribution_patch_head_pattern",
               "attribution_patch_head_value", "attribution_patch_path"]
SIDES = {"q": 0, "k": 1, "v": 2}


def compute(types, model, probe, options=None):
    fn = scalars.make_compute_fn(types, model.config, probe, options=options)
    return {k: np.asarray(v) for k, v in fn(eqx.filter(model, eqx.is_array)).items()}


def load_model(run, step):
    """The model of checkpoint `step` of a run directory."""
    config = ModelConfig.from_dict(store.read_run_json(run)["model"])
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), eqx.filter_eval_shape(build_model, config))
    return load_named_leaves(zeros, store.open_archive(run).load(step))


def random_model(config, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


# -- the planted circuit -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def shuffled(planted):
    """The built-in induction pair (second repeat shuffled) on the planted circuit."""
    return compute(PAIR_TYPES, planted, pair_from_repeated(distinct_repeats(), metric="logit_diff"))


def key_pair(p=3):
    """Clean repeats vs token p of the first repeat replaced by a token absent from the sequence: the
    key the induction head needs at p+1 (prev token a_p) is gone, its value (a_{p+1}) is not.
    The metric reads the query at T+p (token a_p, answer a_{p+1}); the wrong answer is the new token."""
    clean = np.asarray(distinct_repeats().arrays["tokens"])
    fresh = np.array([min(set(range(1, V)) - set(row.tolist())) for row in clean])
    corrupt = clean.copy()
    corrupt[:, p] = fresh
    return scalars.probes.pair_from_arrays(clean, corrupt, answer_pos=[T + p], wrong_answers=fresh[:, None],
                                    metric="logit_diff", vocab_size=V, name="key_pair")


@pytest.fixture(scope="module")
def keyed(planted):
    return compute(PAIR_TYPES, planted, key_pair())


def test_planted_induction_head_output_restores_the_clean_metric(shuffled):
    out = shuffled
    assert out["pair_metric_clean"] == pytest.approx(10.0, abs=1e-3)  # W_U gain 10 on the copied token
    np.testing.assert_allclose(out["patch_head_output"][1, 0], 1.0, atol=1e-4)  # the induction head: 100%
    np.testing.assert_allclose(out["patch_head_pattern"][1, 0], 1.0, atol=1e-4)  # ... through its pattern
    assert abs(out["patch_head_value"][1, 0]) < 1e-4  # its values (tokens) are the same in both runs
    for layer in (0, 1):  # dead heads: exactly nothing
        assert out["patch_head_output"][layer, 1] == 0.0
    assert abs(out["patch_head_output"][0, 0]) < 0.05  # the first repeat (its keys) is not corrupted
    # the previous-token head's small effect goes through the induction head's keys only
    path = out["path_patch"][0, 0, 1, 0]
    np.testing.assert_allclose(path[SIDES["k"]], out["patch_head_output"][0, 0], atol=1e-5)
    assert path[SIDES["q"]] == 0.0 and path[SIDES["v"]] == 0.0
    assert np.isnan(out["path_patch"][1]).all() and np.isnan(out["path_patch"][:, :, 0]).all()
    # the corruption lives in the second repeat's tokens: only the positions the metric reads matter
    resid = out["patch_resid"]
    assert np.abs(resid[:, : T + 1]).max() < 1e-6 and np.abs(resid[:, 2 * T]).max() < 1e-6
    assert (resid[1, T + 1: 2 * T] > 0.1).all()
    np.testing.assert_allclose(out["logit_diff_attribution"], [[0, 0], [10, 0]], atol=1e-3)
    np.testing.assert_allclose(out["logit_diff_lens"], [0, 10], atol=1e-3)
    # no LayerNorm and a linear read-out: first order is exact for the head output and pattern
    np.testing.assert_allclose(out["attribution_patch_head_output"], out["patch_head_output"] * [[0, 0], [1, 0]],
                               atol=1e-4)


def test_planted_previous_token_head_reaches_the_induction_head_through_its_key(keyed):
    out = keyed
    path = out["path_patch"][0, 0, 1, 0]
    np.testing.assert_allclose(path[SIDES["k"]], 1.0, atol=1e-4)  # the key path carries the whole effect
    assert path[SIDES["q"]] == 0.0 and path[SIDES["v"]] == 0.0
    assert np.abs(out["path_patch"][0, :, 1, 1]).max() == 0.0  # the dead receiver
    np.testing.assert_allclose(out["patch_head_output"], [[1, 0], [1, 0]], atol=1e-4)
    np.testing.assert_allclose(out["patch_head_pattern"][1, 0], 1.0, atol=1e-4)
    assert abs(out["patch_head_value"][1, 0]) < 1e-4
    expected = np.zeros_like(out["patch_resid"])
    expected[0, 3] = 1.0  # the replaced token itself
    expected[1, 4] = 1.0  # the position whose previous-token output the key reads
    np.testing.assert_allclose(out["patch_resid"], expected, atol=1e-4)
    assert out["pair_metric_corrupt"] == pytest.approx(0.0, abs=1e-3)  # no key matches: attention rests on BOS


# -- fast == naive on random checkpoints ---------------------------------------------------------
LM_CFG = ModelConfig(n_layers=3, d_model=16, n_heads=2, vocab_size=20, n_ctx=16)  # LN + MLP, 3 layers
CLS_CFG = ModelConfig(head="classifier", d_in=6, n_labels=4, positional="rope", attn_only=True, n_layers=2,
                      d_model=16, n_heads=2, n_ctx=8)
RAW = {t: {"normalize": False} for t in NAIVE_TYPES}


def classifier_pair(seed=0, batch=6):
    rng = np.random.default_rng(seed)
    plain = scalars.probes.from_classifier_arrays(rng.normal(size=(batch, 3, 6)), rng.integers(0, 4, size=(batch, 3)),
                                           name="cls")
    return scalars.probes.classifier_label_swap_pair(plain, n_labels=4)


def assert_fast_equals_naive(fast: dict, model, pair, what):
    patcher = NaivePatcher(model, pair)
    for name in NAIVE_TYPES:
        ref = scalars.reference.naive_patching(name, model, pair, normalize=False, patcher=patcher)
        got = np.asarray(fast[name])
        assert got.shape == ref.shape, name
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: {name}")
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=f"{what}: {name}")
        assert np.nanmax(np.abs(ref)) > 1e-3, f"{what}: {name} is trivially zero"


def test_fast_equals_naive_full_forward_patching_lm():
    pair = scalars.probes.induction_pair(seed=1, batch=4, T=5, vocab_size=LM_CFG.vocab_size)
    models = [random_model(LM_CFG, seed) for seed in (1, 2)]
    fn = scalars.make_compute_fn(NAIVE_TYPES, LM_CFG, pair, options=RAW, head_batching="map")
    for i, model in enumerate(models):
        assert_fast_equals_naive(fn(eqx.filter(model, eqx.is_array)), model, pair, f"lm checkpoint {i}")
    assert fn.trace_count == 1


@pytest.mark.slow
def test_fast_equals_naive_classifier_block_of_checkpoints_vmap():
    pair = classifier_pair()
    models = [random_model(CLS_CFG, seed) for seed in (3, 4)]
    fn = scalars.engine.make_block_compute_fn(NAIVE_TYPES, CLS_CFG, pair, options=RAW, head_batching="vmap")
    out = fn(scalars.engine.stack_params(models))
    for i, model in enumerate(models):
        assert_fast_equals_naive({k: v[i] for k, v in out.items()}, model, pair, f"classifier checkpoint {i}")


def test_normalisation_and_min_gap():
    model, pair = random_model(LM_CFG, 1), scalars.probes.induction_pair(seed=1, batch=4, T=5, vocab_size=20)
    names = ["patch_head_output", "attribution_patch_head_output", "pair_metric_clean", "pair_metric_corrupt"]
    opts = {"patch_head_output": {"min_gap": 0.0}, "attribution_patch_head_output": {"min_gap": 1e6}}
    out = compute(names, model, pair, opts)
    raw = scalars.reference.naive_patching("patch_head_output", model, pair, normalize=False)
    gap = out["pair_metric_clean"] - out["pair_metric_corrupt"]
    np.testing.assert_allclose(out["patch_head_output"], raw / gap, rtol=1e-4, atol=1e-6)
    assert np.isnan(out["attribution_patch_head_output"]).all()  # the gap is below min_gap: undefined


def test_every_patching_type_declares_its_dims_and_shape():
    pair = scalars.probes.induction_pair(batch=2, T=3, vocab_size=LM_CFG.vocab_size)
    assert set(EXACT + ATTRIBUTION) <= set(PAIR_TYPES)
    for name in PAIR_TYPES:
        dst = scalars.get_type(name)
        assert set(dst.dims) <= set(scalars.dims.KNOWN_DIMS) - {"step", "run"} and dst.description
    assert scalars.registry.type_shape("patch_resid", LM_CFG, pair) == (3, 7)
    assert scalars.registry.type_shape("path_patch", LM_CFG, pair) == (3, 2, 3, 2, 3)
    assert scalars.registry.type_coords("attribution_patch_path", LM_CFG)["side"].tolist() == ["q", "k", "v"]
    for exact, approx in zip(EXACT, ATTRIBUTION):
        assert scalars.get_type(exact).dims == scalars.get_type(approx).dims


def test_label_swap_pair_swaps_the_query_label_in_the_context():
    ex = np.zeros((3, 3, 2), np.float32)
    labels = np.array([[1, 3, 1], [2, 0, 0], [4, 4, 4]])  # A la B lb Q; the last has no other label
    pair = scalars.probes.classifier_label_swap_pair(scalars.probes.from_classifier_arrays(ex, labels), n_labels=5)
    np.testing.assert_array_equal(pair.arrays["corrupt_labels"], [[3, 1, 1], [0, 2, 0], [0, 0, 4]])
    np.testing.assert_array_equal(pair.arrays["answers"][:, 0], [1, 0, 4])
    np.testing.assert_array_equal(pair.arrays["wrong_answers"][:, 0], [3, 2, 0])
    np.testing.assert_array_equal(pair.arrays["answer_pos"][:, 0], [4, 4, 4])  # the query position (2P - 2)


def test_induction_pair_shuffles_every_position_of_the_second_repeat():
    pair = scalars.probes.induction_pair(seed=3, batch=8, T=6, vocab_size=500)
    clean, corrupt = pair.arrays["tokens"], pair.arrays["corrupt_tokens"]
    np.testing.assert_array_equal(corrupt[:, : T + 1], clean[:, : T + 1])
    np.testing.assert_array_equal(np.sort(corrupt[:, T + 1:], 1), np.sort(clean[:, T + 1:], 1))
    assert (corrupt[:, T + 1:] != clean[:, T + 1:]).all()  # a cycle moves every token (distinct at V=500)
    np.testing.assert_array_equal(pair.arrays["answers"], clean[:, T + 2:])
    assert pair.metadata["T"] == T and pair.metric == "logit_diff"


# -- bad input ---------------------------------------------------------------------------------
def test_bad_pairs_are_refused_with_one_sentence():
    clean = np.ones((2, 7), np.int32)
    with pytest.raises(ValueError, match=r"clean tokens have shape \(2, 7\) but corrupted tokens \(2, 6\)"):
        scalars.probes.pair_from_arrays(clean, np.ones((2, 6), np.int32))
    with pytest.raises(ValueError, match="unknown metric 'bleu'; use one of loss, logit_diff, accuracy"):
        scalars.probes.pair_from_arrays(clean, clean, metric="bleu")
    with pytest.raises(ValueError, match="answers hold token ids outside the model's 0..15"):
        scalars.probes.pair_from_arrays(clean, clean, answers=[[99]], answer_pos=[2], wrong_answers=[[1]], vocab_size=16)
    loose = scalars.probes.pair_from_arrays(clean, clean, answers=[[99]], answer_pos=[2], wrong_answers=[[1]])
    with pytest.raises(ValueError, match="answers hold token ids outside"):  # checked against the model too
        scalars.make_compute_fn(["patch_head_output"], ModelConfig(vocab_size=16, n_ctx=8), loose)
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        compute(["patch_head_output"], random_model(LM_CFG, 0), scalars.probes.induction_pair(batch=2, T=3, vocab_size=20),
                {"patch_head_output": {"metric": "bleu"}})
    with pytest.raises(ValueError, match="accuracy has no gradient"):
        compute(["attribution_patch_resid"], random_model(LM_CFG, 0),
                scalars.probes.induction_pair(batch=2, T=3, vocab_size=20),
                {"attribution_patch_resid": {"metric": "accuracy"}})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True)


def test_cli_bad_pair_files_exit_cleanly_and_store_nothing(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    vocab = store.read_run_json(run)["model"]["vocab_size"]
    np.save(tmp_path / "clean.npy", np.ones((2, 9), np.int32))
    np.save(tmp_path / "short.npy", np.ones((2, 8), np.int32))
    pair = f"{tmp_path}/clean.npy,{tmp_path}/short.npy"
    res = cli("compute", str(run), "--type", "patch_head_output", "--probe", pair)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "clean tokens have shape (2, 9) but corrupted tokens (2, 8)" in res.stderr
    np.savez(tmp_path / "pair.npz", tokens=np.ones((2, 9), np.int32), corrupt_tokens=np.ones((2, 9), np.int32),
             answer_pos=np.array([[3], [3]]), answers=np.full((2, 1), vocab + 5), wrong_answers=np.ones((2, 1)))
    res = cli("compute", str(run), "--type", "patch_head_output", "--probe", str(tmp_path / "pair.npz"))
    assert res.returncode == 2 and f"outside the model's 0..{vocab - 1}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (run / "scalars.zarr").exists()


def test_path_patch_round_trips_through_the_store_with_side_labels(tiny_run, copy_run):
    run = copy_run(tiny_run)
    scalars.compute(run, ["path_patch", "patch_resid"], steps="last", probe="induction_pair:batch=4,T=5")
    ds = store.open_scalars(run)
    assert ds.path_patch.dims == ("step", "layer", "head", "dst_layer", "dst_head", "side")
    assert ds.side.values.tolist() == ["q", "k", "v"] and ds.sizes["pos"] == 11
    info = store.read_run_json(run)
    model = load_model(run, int(ds.step[-1]))
    pair = scalars.engine.build_run_probe("induction_pair:batch=4,T=5", run, info, model.config)
    direct = compute(["path_patch"], model, pair)["path_patch"]
    stored = ds.path_patch.sel(step=int(ds.step[-1])).values
    np.testing.assert_allclose(stored, direct, atol=1e-6, equal_nan=True)
    assert ds.path_patch.sel(side="k").dims == ("step", "layer", "head", "dst_layer", "dst_head")


# -- a trained run through its phase change ------------------------------------------------------
@pytest.mark.slow
def test_attribution_tracks_exact_patching_after_the_phase_change(trained_induction_tiny):
    run = trained_induction_tiny
    info = store.read_run_json(run)
    config = ModelConfig.from_dict(info["model"])
    pair = scalars.engine.build_run_probe("induction_pair", run, info, config)
    last = int(store.open_archive(run).steps[-1])
    model = load_model(run, last)
    out = compute(EXACT + ATTRIBUTION, model, pair)
    r = {}
    for exact, approx in zip(EXACT, ATTRIBUTION):
        ok = ~np.isnan(out[exact])
        r[exact] = np.corrcoef(out[exact][ok], out[approx][ok])[0, 1]
    heads = EXACT[1:4]
    pooled = np.corrcoef(np.concatenate([out[e].ravel() for e in heads]),
                         np.concatenate([out[a].ravel() for a in ATTRIBUTION[1:4]]))[0, 1]
    print("attribution vs exact Pearson at step", last, {k: round(float(v), 3) for k, v in r.items()},
          "pooled heads", round(float(pooled), 3))
    assert r["patch_head_output"] >= 0.99 and r["patch_head_pattern"] >= 0.99 and r["patch_head_value"] >= 0.9
    assert pooled >= 0.9


@pytest.mark.slow
def test_cli_patch_head_output_shows_the_induction_heads_taking_over(trained_induction_tiny, copy_run):
    run = copy_run(trained_induction_tiny)
    res = cli("compute", str(run), "--type", "patch_head_output", "--type", "pair_metric_clean", "--type",
              "pair_metric_corrupt", "--type", "induction_score", "--probe", "induction_pair", "-q")
    assert res.returncode == 0, res.stderr
    ds = store.open_scalars(run).compute()
    effect = ds.patch_head_output
    assert effect.dims == ("step", "layer", "head")
    assert effect.attrs["probe"] == "induction_pair" and len(effect.attrs["probe_hash"]) == 64
    gap = (ds.pair_metric_clean - ds.pair_metric_corrupt).values
    defined = np.abs(gap) >= 0.1  # the type's min_gap: where the pair separates clean from corrupt
    np.testing.assert_array_equal(np.isnan(effect.values).all((1, 2)), ~defined)
    assert not defined[0] and defined[-5:].all(), "no gap before training, a gap after the phase change"
    late = effect.values[-5:]
    assert np.abs(late[:, 0]).max() < 0.05, "layer-0 heads restore nothing of the shuffled second repeat"
    np.testing.assert_allclose(late[:, 1].sum(-1), 1.0, atol=0.2)  # layer 1 restores the whole gap ...
    top = int(np.argmax(ds.induction_score.values[-1, 1]))
    assert late[:, 1, top].min() > 0.25  # ... its best induction head a large share of it
    restored = effect.values[:, 1, top] * gap  # logits restored by that head
    first = int(np.argmax(defined))
    assert restored[first] < 0.5 < 1.0 < restored[-1], "the head's restored logit difference grows across the change"


@pytest.mark.slow
def test_patching_types_say_why_their_cells_can_be_nan(tiny_run, copy_run):
    import subprocess
    import sys

    import scalars

    run = copy_run(tiny_run)
    (spec,) = scalars.plan(run, ["patch_resid"])[0].specs
    assert "min_gap" in spec.attrs["nan_means"]
    assert "nan_means" not in scalars.plan(run, ["induction_score"])[0].specs[0].attrs
    res = subprocess.run([sys.executable, "-m", "cli.app", "compute", str(run), "--type", "patch_resid", "--steps", "0",
                          "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "cli.app", "show", str(run), "--type", "patch_resid"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "NaN cells: every cell of a checkpoint is NaN where" in res.stdout.replace("\n", " ")
