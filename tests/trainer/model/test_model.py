"""The model: equal to an independent GPT-2 forward, documented activation tree, cache semantics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import ModelConfig, build_model, named_leaves, load_named_leaves


def randomize(model, seed=1, scale=0.3):
    """The model with every parameter drawn at random (so LN gains and biases are not trivial)."""
    leaves = named_leaves(model)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = {n: np.asarray(scale * jax.random.normal(k, v.shape)) for (n, v), k in zip(leaves.items(), keys)}
    return load_named_leaves(model, new)


def reference_gpt2(p: dict, cfg: ModelConfig, tokens: np.ndarray) -> np.ndarray:
    """GPT-2 forward written from the equations, numpy float64, weights by name."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}

    def ln(x, prefix):
        if not cfg.layernorm:
            return x
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.ln_eps) * p[prefix + ".w"] + p[prefix + ".b"]

    def gelu_new(a):
        return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))

    T = len(tokens)
    x = p["embed.W_E"][tokens] + p["embed.W_pos"][:T]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        h = ln(x, b + "ln1")
        heads = []
        for hd in range(cfg.n_heads):
            q = h @ p[b + "attn.W_Q"][hd] + p[b + "attn.b_Q"][hd]
            k = h @ p[b + "attn.W_K"][hd] + p[b + "attn.b_K"][hd]
            v = h @ p[b + "attn.W_V"][hd] + p[b + "attn.b_V"][hd]
            s = q @ k.T / math.sqrt(cfg.d_head)
            s = np.where(np.tril(np.ones((T, T))) > 0, s, -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            heads.append(a @ v)
        concat = np.concatenate(heads, axis=-1)  # (T, H*e), GPT-2's merged heads
        W_O = p[b + "attn.W_O"].reshape(cfg.n_heads * cfg.d_head, cfg.d_model)
        x = x + concat @ W_O + p[b + "attn.b_O"]
        if not cfg.attn_only:
            m = ln(x, b + "ln2") @ p[b + "mlp.W_in"] + p[b + "mlp.b_in"]
            x = x + gelu_new(m) @ p[b + "mlp.W_out"] + p[b + "mlp.b_out"]
    x = ln(x, "ln_final")
    W_U = p["embed.W_E"].T if cfg.tied_unembed else p["W_U"]
    return x @ W_U


GPT2_VARIANTS = {
    "full": {},
    "attn_only": {"attn_only": True},
    "no_ln": {"layernorm": False},
    "no_ln_attn_only_tied": {"layernorm": False, "attn_only": True, "tied_unembed": True},
}


@pytest.mark.parametrize("variant", sorted(GPT2_VARIANTS))
def test_logits_equal_independent_gpt2_forward(variant):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, vocab_size=40, n_ctx=24, **GPT2_VARIANTS[variant])
    # without LayerNorm activations grow with depth: smaller weights keep logits O(1) in float32
    model = randomize(build_model(cfg, seed=0), scale=0.3 if cfg.layernorm else 0.1)
    tokens = np.random.default_rng(0).integers(0, 40, size=20)
    ours = np.asarray(jax.jit(model.__call__)(jnp.asarray(tokens)))
    ref = reference_gpt2({k: np.asarray(v) for k, v in named_leaves(model).items()}, cfg, tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


def small_model(**overrides):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, vocab_size=40, n_ctx=24, **overrides)
    return randomize(build_model(cfg, seed=0))


def test_activation_tree_has_documented_keys_and_shapes():
    model = small_model()
    T, H, d, e, m = 12, 4, 32, 8, 128
    r = model.call_with_all_aux(jnp.arange(T) % 40)
    assert r["out"].shape == r["logits"].shape == (T, 40)
    assert r["embed"].shape == r["pos_embed"].shape == (T, d)
    assert len(r["layer_outputs"]) == 2
    for layer, block in enumerate(r["layer_outputs"]):
        for name in ("resid_pre", "resid_mid", "resid_post", "out"):
            assert block[name].shape == (T, d)
        assert block["ln1_output"]["out"].shape == (T, d) and block["ln1_output"]["scale"].shape == (T, 1)
        attn = block["attn_output"]
        for name in ("q", "k", "v", "z"):
            assert attn[name].shape == (H, T, e)
        assert attn["scores"].shape == attn["pattern"].shape == (H, T, T)
        assert attn["result"].shape == (H, T, d)
        assert attn["out"].shape == (T, d)
        assert block["mlp_output"]["pre"].shape == block["mlp_output"]["post"].shape == (T, m)
        pattern = np.asarray(attn["pattern"])
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
        assert np.all(np.triu(pattern, k=1) == 0.0), "pattern must be causal"
        b_O = np.asarray(model.blocks[layer].attn.b_O)
        np.testing.assert_allclose(np.asarray(attn["result"]).sum(0), np.asarray(attn["out"]) - b_O, atol=1e-5)


def test_empty_cache_is_bit_identical_to_call():
    model = small_model()
    tokens = jnp.arange(16) % 40
    plain = jax.jit(lambda m, t: m(t))(model, tokens)
    for cache in (None, {}, {"layer_outputs": [{}, {}]}):
        aux = jax.jit(lambda m, t: m.call_with_all_aux(t, cache=cache)["out"])(model, tokens)
        assert np.array_equal(np.asarray(plain), np.asarray(aux))


def test_cached_uniform_pattern_changes_exactly_that_head():
    model = small_model()
    tokens = jnp.arange(10) % 40
    T, layer, head = 10, 1, 2
    clean = model.call_with_all_aux(tokens)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    pattern = np.asarray(clean["layer_outputs"][layer]["attn_output"]["pattern"]).copy()
    pattern[head] = uniform
    cache = {"layer_outputs": [{}, {"attn_output": {"pattern": jnp.asarray(pattern)}}]}
    patched = model.call_with_all_aux(tokens, cache=cache)
    attn_c, attn_p = clean["layer_outputs"][layer]["attn_output"], patched["layer_outputs"][layer]["attn_output"]
    v = np.asarray(attn_c["v"][head])
    expected_z = np.cumsum(v, axis=0) / np.arange(1, T + 1)[:, None]  # hand computation: running mean
    np.testing.assert_allclose(np.asarray(attn_p["z"][head]), expected_z, atol=1e-6)
    others = [h for h in range(4) if h != head]
    np.testing.assert_array_equal(np.asarray(attn_p["z"])[others], np.asarray(attn_c["z"])[others])
    expected_out = np.asarray(attn_c["out"]) + (expected_z - np.asarray(attn_c["z"][head])) @ np.asarray(
        model.blocks[layer].attn.W_O[head]
    )
    np.testing.assert_allclose(np.asarray(attn_p["out"]), expected_out, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(patched["layer_outputs"][layer]["resid_pre"]), np.asarray(clean["layer_outputs"][layer]["resid_pre"])
    )


def test_cache_mask_on_one_neuron_changes_only_downstream():
    model = small_model()
    tokens = jnp.arange(10) % 40
    neuron = 5
    mask = np.zeros((10, 128), bool)
    mask[:, neuron] = True
    cache = {"layer_outputs": [{"mlp_output": {"post": jnp.zeros((10, 128))}}]}
    cache_mask = {"layer_outputs": [{"mlp_output": {"post": jnp.asarray(mask)}}]}
    clean = model.call_with_all_aux(tokens)
    patched = model.call_with_all_aux(tokens, cache=cache, cache_mask=cache_mask)
    post_c = np.asarray(clean["layer_outputs"][0]["mlp_output"]["post"])
    post_p = np.asarray(patched["layer_outputs"][0]["mlp_output"]["post"])
    assert np.all(post_p[:, neuron] == 0)
    np.testing.assert_array_equal(np.delete(post_p, neuron, 1), np.delete(post_c, neuron, 1))
    for name in ("resid_pre", "resid_mid"):  # upstream of the neuron: untouched
        np.testing.assert_array_equal(
            np.asarray(patched["layer_outputs"][0][name]), np.asarray(clean["layer_outputs"][0][name])
        )
    delta = post_c[:, neuron:neuron + 1] * np.asarray(model.blocks[0].mlp.W_out[neuron])[None, :]
    np.testing.assert_allclose(
        np.asarray(patched["layer_outputs"][0]["resid_post"]),
        np.asarray(clean["layer_outputs"][0]["resid_post"]) - delta,
        atol=1e-5,
    )
    assert not np.allclose(np.asarray(patched["logits"]), np.asarray(clean["logits"]))


def test_head_ablation_by_mask_on_z():
    model = small_model()
    tokens = jnp.arange(10) % 40
    mask = np.zeros((4, 1, 1), bool)
    mask[1] = True
    cache = {"layer_outputs": [{"attn_output": {"z": jnp.zeros((4, 10, 8))}}]}
    cache_mask = {"layer_outputs": [{"attn_output": {"z": jnp.asarray(mask)}}]}
    clean = model.call_with_all_aux(tokens)
    ablated = model.call_with_all_aux(tokens, cache=cache, cache_mask=cache_mask)
    expected = np.asarray(clean["layer_outputs"][0]["attn_output"]["out"]) - np.asarray(
        clean["layer_outputs"][0]["attn_output"]["result"][1]
    )
    np.testing.assert_allclose(np.asarray(ablated["layer_outputs"][0]["attn_output"]["out"]), expected, atol=1e-5)


def test_forward_from_reuses_the_prefix():
    model = small_model()
    tokens = jnp.arange(12) % 40
    clean = model.call_with_all_aux(tokens)
    resid = clean["layer_outputs"][1]["resid_pre"]
    again = model.forward_from(1, resid)
    np.testing.assert_allclose(np.asarray(again["logits"]), np.asarray(clean["logits"]), atol=1e-6)
    assert again["layer_outputs"][0] == {}


def test_vmap_equals_loop():
    model = small_model()
    batch = jnp.asarray(np.random.default_rng(1).integers(0, 40, size=(5, 12)))
    vmapped = jax.vmap(model.call_with_all_aux)(batch)
    for i in range(5):
        single = model.call_with_all_aux(batch[i])
        leaves_v = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: a[i], vmapped))
        leaves_s = jax.tree_util.tree_leaves(single)
        for a, b in zip(leaves_v, leaves_s):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_other_mlp_activations(activation):
    model = small_model(activation=activation)
    r = model.call_with_all_aux(jnp.arange(8))
    mlp = r["layer_outputs"][0]["mlp_output"]
    pre = np.asarray(mlp["pre"])
    expected_post = {
        "relu": np.maximum(pre, 0),
        "gelu": np.asarray(jax.nn.gelu(mlp["pre"], approximate=False)),
        "swiglu": np.asarray(jax.nn.silu(mlp["pre"]) * mlp.get("pre_linear", 0)),
    }[activation]
    np.testing.assert_allclose(np.asarray(mlp["post"]), expected_post, atol=1e-6)


def test_rope_classifier_shapes_and_query_logits():
    cfg = ModelConfig(
        head="classifier", d_in=12, n_labels=5, positional="rope", attn_only=True, n_layers=2, d_model=32, n_heads=4,
        qkv_bias=False, out_bias=False,
    )
    model = randomize(build_model(cfg, seed=3))
    x = {"examples": jnp.ones((3, 12)), "labels": jnp.array([0, 1, 2])}
    r = model.call_with_all_aux(x)
    assert r["out"].shape == (5, 5)  # 2 context pairs + query = 5 tokens, 5 labels
    assert r["layer_outputs"][0]["attn_output"]["pattern"].shape == (4, 5, 5)
    # the query's label is never fed in: changing it changes nothing
    x2 = {"examples": x["examples"], "labels": jnp.array([0, 1, 4])}
    np.testing.assert_array_equal(np.asarray(model(x2)), np.asarray(model(x)))


def test_rope_rotation_is_relative():
    """Scores under RoPE depend only on the offset between positions, not on absolute positions."""
    from trainer.model import rotate_interleaved

    e = 8
    q = jnp.tile(jax.random.normal(jax.random.key(0), (1, 1, e)), (1, 6, 1))
    k = jnp.tile(jax.random.normal(jax.random.key(1), (1, 1, e)), (1, 6, 1))
    s = np.asarray(jnp.einsum("hqe,hke->hqk", rotate_interleaved(q, 10000.0), rotate_interleaved(k, 10000.0)))[0]
    for offset in range(3):
        diag = np.diagonal(s, offset=-offset)
        np.testing.assert_allclose(diag, diag[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": -4}, "d_model must be a positive integer"),
        ({"d_model": 30, "n_heads": 4}, "divisible by model.n_heads"),
        ({"activation": "tanh"}, "unknown model.activation 'tanh'"),
        ({"positional": "alibi"}, "unknown model.positional"),
        ({"head": "classifier", "d_in": 0, "n_labels": 5}, "classifier needs model.d_in > 0"),
    ],
)
def test_bad_config_gives_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_config_round_trips_through_json():
    cfg = ModelConfig(n_layers=3, d_model=48, n_heads=6, activation="swiglu", positional="rope", tied_unembed=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"n_layer": 3})


def test_named_leaves_round_trip_is_exact():
    model = small_model()
    leaves = {k: np.asarray(v) for k, v in named_leaves(model).items()}
    again = load_named_leaves(build_model(model.config, seed=9), leaves)
    for name, value in named_leaves(again).items():
        assert np.array_equal(np.asarray(value), leaves[name])
    bad = dict(leaves)
    bad["W_U"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"parameter W_U has shape \(3, 3\)"):
        load_named_leaves(model, bad)
