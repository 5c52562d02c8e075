"""Reconstituted attention against references built here: float64 numpy attention from the cached
residual streams and the weights, and (both sides edited) a full forward with resid_pre edited."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except

import scalars
from trainer.model import ModelConfig, build_model, named_leaves

CFG = ModelConfig(n_layers=3, d_model=24, n_heads=3, vocab_size=20, n_ctx=16, qkv_bias=True, out_bias=True)
SCORES = ("prev_token", "bos", "induction", "duplicate")


def random_model(seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, CFG)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def np_score(A, score, T):
    """(H, S, S) float64 mean pattern -> (H,), each score written out."""
    S = A.shape[-1]
    if score == "prev_token":
        return np.mean([A[:, i, i - 1] for i in range(1, S)], axis=0)
    if score == "bos":
        return np.mean([A[:, i, 0] for i in range(1, S)], axis=0)
    shift = T - 1 if score == "induction" else T
    return np.mean([A[:, i, i - shift] for i in range(T + 1, 2 * T + 1)], axis=0)


def np_pattern(p, layer, xq, xk):
    """Causal softmax attention of every head of `layer` from LayerNorm inputs xq, xk (B, S, d), float64."""
    pre = f"blocks.{layer}"

    def ln(x):
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + CFG.ln_eps) * p[f"{pre}.ln1.w"] + p[f"{pre}.ln1.b"]

    q = np.einsum("bsd,hde->bhse", ln(xq), p[f"{pre}.attn.W_Q"]) + p[f"{pre}.attn.b_Q"][None, :, None]
    k = np.einsum("bsd,hde->bhse", ln(xk), p[f"{pre}.attn.W_K"]) + p[f"{pre}.attn.b_K"][None, :, None]
    s = np.einsum("bhqe,bhke->bhqk", q, k) / np.sqrt(q.shape[-1])
    S = s.shape[-1]
    s = np.where(np.tril(np.ones((S, S), bool)), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).mean(0)  # (H, S, S)


@pytest.fixture(scope="module")
def setup():
    model = random_model()
    probe = scalars.probes.repeated_tokens(batch=5, T=6, vocab_size=CFG.vocab_size, seed=3)
    _, cache = scalars.run_with_cache(scalars.one_checkpoint.CheckpointModel(model), probe.arrays["tokens"])
    p = {k: np.asarray(v, np.float64) for k, v in named_leaves(model).items()}
    return model, probe, cache, p


def compute(model, probe, options, name="reconstituted_pattern_score"):
    fn = scalars.make_compute_fn([name], CFG, probe, options={name: options})
    return np.asarray(fn(eqx.filter(model, eqx.is_array))[name], np.float64)


@pytest.mark.parametrize("remove_from", slow_except(["query", "key", "both"], ['both']))
def test_src_head_removed_from_chosen_sides_equals_numpy_attention(setup, remove_from):
    model, probe, cache, p = setup
    T = probe.metadata["T"]
    for score in SCORES:
        got = compute(model, probe, {"score": score, "remove_from": remove_from})
        assert np.isnan(got[0]).all() and np.isnan(got[1, :, 1:]).all()  # no earlier source: NaN
        for layer in range(1, CFG.n_layers):
            resid = np.asarray(cache[f"blocks.{layer}.hook_resid_pre"], np.float64)
            for src in range(layer):
                result = np.asarray(cache[f"blocks.{src}.attn.hook_result"], np.float64)  # (B, S, H, d)
                for g in range(CFG.n_heads):
                    mod = resid - result[:, :, g]
                    xq = mod if remove_from in ("query", "both") else resid
                    xk = mod if remove_from in ("key", "both") else resid
                    want = np_score(np_pattern(p, layer, xq, xk), score, T)
                    np.testing.assert_allclose(got[layer, :, src, g], want, atol=2e-6, err_msg=(score, layer, src, g))


def test_both_sides_removed_equals_a_full_forward_with_resid_pre_edited(setup):
    """Removing a head from both sides is the pattern of a full forward whose layer-l input lacks it."""
    model, probe, cache, _ = setup
    got = compute(model, probe, {"score": "prev_token", "remove_from": "both"})
    tokens = probe.arrays["tokens"]
    layer, src, g = 2, 0, 1
    edited = np.asarray(cache[f"blocks.{layer}.hook_resid_pre"]) - np.asarray(cache[f"blocks.{src}.attn.hook_result"])[:, :, g]
    run = jax.vmap(lambda t, r: model.call_with_all_aux(t, cache={"layer_outputs": {layer: {"resid_pre": r}}}))(
        tokens, jnp.asarray(edited))
    A = np.asarray(run["layer_outputs"][layer]["attn_output"]["pattern"], np.float64).mean(0)
    np.testing.assert_allclose(got[layer, :, src, g], np_score(A, "prev_token", None), atol=1e-6)


def test_mixed_streams_on_a_pair(setup):
    model, probe, cache, p = setup
    pair = scalars.probes.induction_pair(batch=5, T=6, vocab_size=CFG.vocab_size, seed=3)
    _, clean_cache = scalars.run_with_cache(scalars.one_checkpoint.CheckpointModel(model), pair.arrays["tokens"])
    _, corrupt_cache = scalars.run_with_cache(scalars.one_checkpoint.CheckpointModel(model), pair.arrays["corrupt_tokens"])
    name = "mixed_stream_pattern_score"
    for q in ("clean", "corrupt"):
        for k in ("clean", "corrupt"):
            got = compute(model, pair, {"score": "prev_token", "query": q, "key": k}, name)
            for layer in range(CFG.n_layers):
                xq = np.asarray((clean_cache if q == "clean" else corrupt_cache)[f"blocks.{layer}.hook_resid_pre"],
                                np.float64)
                xk = np.asarray((clean_cache if k == "clean" else corrupt_cache)[f"blocks.{layer}.hook_resid_pre"],
                                np.float64)
                want = np_score(np_pattern(p, layer, xq, xk), "prev_token", None)
                np.testing.assert_allclose(got[layer], want, atol=2e-6, err_msg=(q, k, layer))
    clean_score = compute(model, pair, {"score": "prev_token", "query": "clean", "key": "clean"}, name)
    plain = scalars.make_compute_fn(["prev_token_score"], CFG, pair)(eqx.filter(model, eqx.is_array))
    np.testing.assert_allclose(clean_score, np.asarray(plain["prev_token_score"]), atol=1e-6)


def test_bad_options_and_probes_are_refused(setup, tiny_run):
    model, probe, _, _ = setup
    with pytest.raises(ValueError, match="option score must be one of prev_token, bos, induction, duplicate"):
        scalars.plan(tiny_run, ["reconstituted_pattern_score"], options={"reconstituted_pattern_score": {"score": "nope"}})
    with pytest.raises(ValueError, match="option remove_from must be one of query, key, both"):
        scalars.plan(tiny_run, ["reconstituted_pattern_score"], options={"reconstituted_pattern_score": {"remove_from": "value"}})
    plain = scalars.probes.from_tokens(np.asarray(probe.arrays["tokens"])[:, :9], name="short")  # no repeat length
    with pytest.raises(ValueError, match="needs a repeated-token probe"):
        compute(model, plain, {"score": "induction"})
    assert compute(model, plain, {"score": "bos"}).shape == (3, 3, 3, 3)  # bos needs no repeat


@pytest.mark.parametrize("parallel", [False, True])
def test_reconstituted_neuron_post_equals_a_full_forward_with_the_mlp_input_edited(parallel):
    """Every (layer, neuron, src head): a full forward whose MLP input stream (resid_mid, or
    resid_pre with a parallel residual) lacks the src head's output, read at the MLP's post."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=20, n_ctx=16, d_mlp=12, parallel_residual=parallel,
                      positional="rope" if parallel else "learned")
    rng = np.random.default_rng(5)
    shaped = eqx.filter_eval_shape(build_model, cfg)
    model = jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shaped)
    probe = scalars.probes.repeated_tokens(batch=4, T=5, vocab_size=20, seed=1)
    tokens = probe.arrays["tokens"]
    fn = scalars.make_compute_fn(["reconstituted_neuron_post"], cfg, probe,
                                 options={"reconstituted_neuron_post": {"readout": "value"}})
    got = np.asarray(fn(eqx.filter(model, eqx.is_array))["reconstituted_neuron_post"], np.float64)
    change = np.asarray(scalars.make_compute_fn(["reconstituted_neuron_post"], cfg, probe)(
        eqx.filter(model, eqx.is_array))["reconstituted_neuron_post"], np.float64)
    clean = jax.vmap(model.call_with_all_aux)(tokens)
    stream = "resid_pre" if parallel else "resid_mid"
    for layer in range(cfg.n_layers):
        base = np.asarray(clean["layer_outputs"][layer]["mlp_output"]["post"], np.float64).mean((0, 1))
        for src in range(cfg.n_layers):
            for g in range(cfg.n_heads):
                feeds = src < layer or (src == layer and not parallel)
                if not feeds:
                    assert np.isnan(got[layer, :, src, g]).all()
                    continue
                result = clean["layer_outputs"][src]["attn_output"]["result"][:, g]  # (B, T, d)
                edited = clean["layer_outputs"][layer][stream] - result
                if parallel:  # resid_pre feeds attention too: edit only the MLP's LayerNorm input
                    entry = {"ln2_output": {"out": jax.vmap(model.blocks[layer].ln2)(edited)}}
                else:
                    entry = {"resid_mid": edited}
                run = jax.vmap(lambda t, e: model.call_with_all_aux(t, cache={"layer_outputs": {layer: e}}))(tokens, entry)
                want = np.asarray(run["layer_outputs"][layer]["mlp_output"]["post"], np.float64).mean((0, 1))
                np.testing.assert_allclose(got[layer, :, src, g], want, atol=1e-6, err_msg=(layer, src, g))
                np.testing.assert_allclose(change[layer, :, src, g], want - base, atol=1e-6)
    assert np.nanmax(np.abs(change)) > 1e-2  # heads do move the neurons
