"""Write norms and activation x gradient of heads and MLP neurons, against references built here:
float64 numpy from `run_with_cache` activations and the weights, and central finite differences of
the probe loss along each activation (a full forward of the whole model with that activation scaled)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except

import scalars
from trainer.model import ModelConfig, build_model

CFG = ModelConfig(n_layers=3, d_model=24, n_heads=3, vocab_size=20, n_ctx=16, d_mlp=32, qkv_bias=True, out_bias=True,
                  mlp_bias=True)
TYPES = ["head_write_norm", "neuron_write_norm", "head_act_grad", "neuron_act_grad"]


def random_model(config, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


@pytest.fixture(scope="module")
def setup():
    model = random_model(CFG)
    probe = scalars.probes.repeated_tokens(batch=6, T=7, vocab_size=CFG.vocab_size, seed=1)
    fn = scalars.make_compute_fn(TYPES, CFG, probe)
    got = {k: np.asarray(v, np.float64) for k, v in fn(eqx.filter(model, eqx.is_array)).items()}
    return model, probe, got


def _loss(model, tokens, cache) -> float:
    """Mean next-token cross-entropy of a full forward with `cache` (batched leaves), in float64."""
    logits = np.asarray(jax.vmap(lambda t, c: model.call_with_all_aux(t, cache=c)["logits"])(tokens, cache), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nxt = tokens[:, 1:]
    return float(-np.take_along_axis(logp[:, :-1], nxt[..., None], -1).mean())


def test_write_norms_equal_numpy_from_the_cache_and_weights(setup):
    model, probe, got = setup
    _, cache = scalars.run_with_cache(scalars.one_checkpoint.CheckpointModel(model), probe.arrays["tokens"])
    for l, block in enumerate(model.blocks):
        z = np.asarray(cache[f"blocks.{l}.attn.hook_z"], np.float64)  # (B, T, H, e)
        writes = np.einsum("bthe,hed->bthd", z, np.asarray(block.attn.W_O, np.float64))
        np.testing.assert_allclose(got["head_write_norm"][l], np.linalg.norm(writes, axis=-1).mean((0, 1)), rtol=1e-5)
        post = np.asarray(cache[f"blocks.{l}.mlp.hook_post"], np.float64)  # (B, T, m)
        w_out = np.linalg.norm(np.asarray(block.mlp.W_out, np.float64), axis=-1)
        np.testing.assert_allclose(got["neuron_write_norm"][l], (np.abs(post) * w_out).mean((0, 1)), rtol=1e-5)
    assert got["neuron_write_norm"].shape == (CFG.n_layers, 32) and (got["neuron_write_norm"] > 0).all()


@pytest.mark.parametrize("site", slow_except(["z", "post"], ['post']))
def test_act_grad_is_the_derivative_along_the_activation(setup, site):
    """d/d alpha L(activation of one unit scaled by alpha) at alpha = 1 is act . grad; central
    differences of the full-forward loss (alpha = 1 +- 1e-2) for every unit of two layers."""
    model, probe, got = setup
    tokens = probe.arrays["tokens"]
    clean = jax.vmap(model.call_with_all_aux)(tokens)
    name, where = ("head_act_grad", "attn_output") if site == "z" else ("neuron_act_grad", "mlp_output")
    h = 1e-2
    checked = []
    for l in (0, CFG.n_layers - 2):
        act = np.asarray(clean["layer_outputs"][l][where][site], np.float64)
        n_units = act.shape[1] if site == "z" else act.shape[-1]
        for u in range(0, n_units, 1 if site == "z" else 7):
            def scaled(alpha):
                a = act.copy()
                if site == "z":
                    a[:, u] *= alpha
                else:
                    a[..., u] *= alpha
                return _loss(model, tokens, {"layer_outputs": {l: {where: {site: jnp.asarray(a, jnp.float32)}}}})
            fd = (scaled(1 + h) - scaled(1 - h)) / (2 * h)
            # float32 losses: the differences carry about 1e-5 of rounding; O(h^2) truncation is smaller
            assert abs(got[name][l, u] - fd) <= 2e-3 * abs(fd) + 3e-5, (name, l, u, got[name][l, u], fd)
            checked.append(abs(fd))
    assert max(checked) > 100 * 3e-5  # real effects, far above the tolerance


def test_head_act_grad_approximates_the_zero_ablation_effect_for_small_heads():
    """With small head outputs (init scale 0.02) the loss is nearly linear in each z: act . grad is
    within 10% of loss - ablated_loss."""
    model = random_model(CFG, seed=3, scale=0.05)
    probe = scalars.probes.repeated_tokens(batch=8, T=7, vocab_size=CFG.vocab_size, seed=2)
    out = scalars.make_compute_fn(["head_act_grad", "ablated_loss", "loss"], CFG, probe)(eqx.filter(model, eqx.is_array))
    effect = float(out["loss"]) - np.asarray(out["ablated_loss"])
    np.testing.assert_allclose(np.asarray(out["head_act_grad"]), effect, rtol=0.1, atol=2e-4)


def test_neuron_types_are_refused_on_attention_only_models_and_left_out_of_all():
    from scalars.engine._plan import applicable_types

    attn_only = ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=20, n_ctx=16, attn_only=True)
    with pytest.raises(ValueError, match="this model is attention-only"):
        scalars.make_compute_fn(["neuron_write_norm"], attn_only, scalars.probes.repeated_tokens(batch=2, T=4, vocab_size=20))
    names = set(applicable_types(attn_only))
    assert "head_write_norm" in names and not {"neuron_write_norm", "neuron_act_grad"} & names
    assert {"neuron_write_norm", "neuron_act_grad"} <= set(applicable_types(CFG))
