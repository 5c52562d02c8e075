"""The residual-identity head ablation (scalars/interventions/_fast_ablation.py) against the cache-based re-run,
over the architectures and probe kinds the engine serves, and the dot-form batch mean."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except

import scalars
from scalars.interventions import _fast_ablation as fa
from trainer.model import CHUNKED_VOCAB, causal_attention, chunked_token_metrics, run_blocks, unembed, unembed_chunks
from scalars.interventions import _ablation as iv
from scalars.interventions._reductions import leading_mean
from trainer.model import ModelConfig, build_model

GPT2 = dict(n_layers=3, d_model=16, n_heads=2, vocab_size=20, n_ctx=16)
CONFIGS = {
    "gpt2": ModelConfig(**GPT2),
    "relu_tied_nobias": ModelConfig(**GPT2, activation="relu", tied_unembed=True, qkv_bias=False, out_bias=False,
                                    mlp_bias=False),
    "swiglu_rope": ModelConfig(**GPT2, activation="swiglu", positional="rope"),  # MLP re-run whole
    "no_layernorm": ModelConfig(**GPT2, layernorm=False, activation="gelu"),
    "attn_only": ModelConfig(**GPT2, attn_only=True),
    "classifier_rope": ModelConfig(head="classifier", d_in=6, n_labels=4, positional="rope", n_layers=2, d_model=16,
                                   n_heads=2, n_ctx=8),
    "regression": ModelConfig(head="regression", d_in=4, n_layers=2, d_model=16, n_heads=2, n_ctx=16),
    # over CHUNKED_VOCAB and not a multiple of the chunk: the ablated re-runs unembed in chunks
    "vocab_20k_chunked": ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=20_001, n_ctx=16,
                                     unembed_bias=True),
}


def random_model(config, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def probe_for(config):
    rng = np.random.default_rng(1)
    if config.head == "classifier":
        return scalars.probes.from_classifier_arrays(rng.normal(size=(5, 3, 6)), rng.integers(0, 4, size=(5, 3)),
                                              rng.integers(0, 2, size=5), name="icl")
    if config.head == "regression":
        return scalars.probes.from_regression_arrays(rng.normal(size=(5, 4, 3)), rng.normal(size=(5, 4)))
    return scalars.probes.repeated_tokens(seed=0, batch=4, T=5, vocab_size=config.vocab_size)


@pytest.mark.parametrize("name", slow_except(sorted(CONFIGS), ['swiglu_rope', 'vocab_20k_chunked']))
def test_residual_identity_equals_cache_rerun(name):
    config = CONFIGS[name]
    model, probe = random_model(config), probe_for(config)

    @jax.jit
    def both(model):
        clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
        out = {}
        for ablation in ("zero", "mean"):
            out["fast", ablation] = fa.head_ablation_metrics(model, probe, clean, ablation=ablation)
            out["cache", ablation] = iv.head_ablation_metrics(model, probe, clean, ablation=ablation)
        return out

    out = both(model)
    for ablation in ("zero", "mean"):
        for i, what in enumerate(("loss", "accuracy")):
            np.testing.assert_allclose(np.asarray(out["fast", ablation][i]), np.asarray(out["cache", ablation][i]),
                                       rtol=1e-5, atol=1e-5, err_msg=f"{name} {ablation} {what}")
    assert out["fast", "zero"][0].shape == (config.n_layers, config.n_heads)


@pytest.mark.slow
def test_vmap_heads_equals_lax_map():
    config = CONFIGS["gpt2"]
    model, probe = random_model(config, seed=3), probe_for(config)
    clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
    by_map = fa.head_ablation_metrics(model, probe, clean, head_batching="map")
    by_vmap = fa.head_ablation_metrics(model, probe, clean, head_batching="vmap")
    np.testing.assert_allclose(np.asarray(by_map[0]), np.asarray(by_vmap[0]), rtol=1e-5, atol=1e-6)


def test_run_blocks_equals_forward_from():
    config = CONFIGS["swiglu_rope"]
    model, probe = random_model(config, seed=4), probe_for(config)
    clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
    resid = clean["layer_outputs"][1]["resid_pre"]
    want = jax.vmap(lambda r: model.forward_from(1, r)["ln_final_output"]["out"])(resid)
    got = model.ln_final(run_blocks(model, 1, resid))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_causal_attention_blocks_equal_one_softmax():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 3, 70, 4)), jnp.float32) for _ in range(3))  # 2 query blocks
    scores = jnp.einsum("bhqe,bhke->bhqk", q, k) / 2.0
    scores = jnp.where(jnp.tril(jnp.ones((70, 70), bool)), scores, -jnp.inf)
    want = jnp.einsum("bhqk,bhke->bhqe", jax.nn.softmax(scores, -1), v)
    got = causal_attention(q / 2.0, k, v)  # q arrives scaled by 1/sqrt(e)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_dead_head_changes_nothing_exactly():
    config = CONFIGS["gpt2"]
    model = random_model(config, seed=5)
    model = eqx.tree_at(lambda m: m.blocks[0].attn.W_O, model, model.blocks[0].attn.W_O.at[1].set(0.0))
    probe = probe_for(config)
    clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
    loss, acc = jax.jit(lambda m, c: fa.head_ablation_metrics(m, probe, c))(model, clean)
    clean_loss, clean_acc = jax.jit(lambda c: iv.probe_metrics(c["logits"], probe))(clean)
    assert float(loss[0, 1]) == float(clean_loss) and float(acc[0, 1]) == float(clean_acc)
    assert float(loss[0, 0]) != float(clean_loss)


def test_leading_mean_is_the_mean():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 5, 2)), jnp.float32)
    np.testing.assert_allclose(np.asarray(leading_mean(x)), np.asarray(x.mean(0)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(leading_mean(x, 2)), np.asarray(x.mean((0, 1))), rtol=1e-6, atol=1e-7)


def test_chunked_cross_entropy_equals_the_whole_vocabulary():
    """Loss and first-argmax accuracy over 3 chunks (the last padded) equal log_softmax over all
    logits; planted ties across chunks resolve to the first index, as jnp.argmax does."""
    config = CONFIGS["vocab_20k_chunked"]
    assert config.vocab_size >= CHUNKED_VOCAB
    model = random_model(config, seed=7)
    rng = np.random.default_rng(0)
    resid = jnp.asarray(rng.normal(size=(3, 6, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, config.vocab_size, size=(3, 6)), jnp.int32)
    logits = unembed(model, resid)
    targets = targets.at[0, :3].set(jnp.argmax(logits[0, :3], -1))  # some right answers
    want_loss = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1).mean()
    want_acc = (jnp.argmax(logits, -1) == targets).mean()
    loss, acc = chunked_token_metrics(model, resid, targets, unembed_chunks(model))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    assert float(acc) == float(want_acc) > 0
    # equal top logits in chunk 0 and chunk 2: the first wins
    W_U = model.W_U.at[:, 18_000].set(model.W_U[:, 5])
    tied = eqx.tree_at(lambda m: (m.W_U, m.b_U), model, (W_U, model.b_U.at[5].set(1e3).at[18_000].set(1e3)))
    _, acc_first = chunked_token_metrics(tied, resid, jnp.full((3, 6), 5, jnp.int32), unembed_chunks(tied))
    _, acc_later = chunked_token_metrics(tied, resid, jnp.full((3, 6), 18_000, jnp.int32), unembed_chunks(tied))
    assert (float(acc_first), float(acc_later)) == (1.0, 0.0)
