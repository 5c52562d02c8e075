"""The definitions of docs/definitions.md against references built here from the weights with numpy.

Each reference is independent code (float64 numpy, or a full forward of the model with an edited
cache), never the package's helper: composition scores from the d x d circuits, direct logit
attribution from the head's z, W_O and the final LayerNorm written out, mean ablation from a full
forward with one head's z replaced.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scalars
from trainer.model import ModelConfig, build_model, load_named_leaves, named_leaves
from tests._paths import FIXTURES

# MLP + LN + every bias, learned positions; d_head = 8 < d_model = 24 so the circuits are low rank
LM_CFG = ModelConfig(n_layers=3, d_model=24, n_heads=3, vocab_size=20, n_ctx=16, qkv_bias=True, out_bias=True,
                     mlp_bias=True, unembed_bias=True)


def random_model(config: ModelConfig, seed: int, scale: float = 0.3):
    """Normal noise on every parameter (LN gains and biases, b_V, b_O included)."""
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def weights(model) -> dict[str, np.ndarray]:
    """Every parameter by name, in float64."""
    return {k: np.asarray(v, np.float64) for k, v in named_leaves(model).items()}


def compute(model, types, probe=None, options=None) -> dict[str, np.ndarray]:
    fn = scalars.make_compute_fn(types, model.config, probe, options=options)
    return {k: np.asarray(v) for k, v in fn(eqx.filter(model, eqx.is_array)).items()}


# -- composition scores ---------------------------------------------------------------------------

def reference_composition(p: dict, n_layers: int, n_heads: int, which: str) -> np.ndarray:
    """TransformerLens all_composition_scores(which) from the d x d circuits, in float64, laid out
    [dst layer, dst head, src layer, src head] with NaN where src layer >= dst layer."""
    def OV(l, h):
        return p[f"blocks.{l}.attn.W_V"][h] @ p[f"blocks.{l}.attn.W_O"][h]

    def QK(l, h):
        return p[f"blocks.{l}.attn.W_Q"][h] @ p[f"blocks.{l}.attn.W_K"][h].T

    right = {"q": QK, "k": lambda l, h: QK(l, h).T, "v": OV}[which]
    out = np.full((n_layers, n_heads, n_layers, n_heads), np.nan)
    for l2 in range(n_layers):
        for h2 in range(n_heads):
            for l1 in range(l2):
                for h1 in range(n_heads):
                    left, r = OV(l1, h1), right(l2, h2)
                    out[l2, h2, l1, h1] = np.linalg.norm(left @ r) / (np.linalg.norm(left) * np.linalg.norm(r))
    return out


def reference_weight_composition(p: dict, n_layers: int, n_heads: int, which: str) -> np.ndarray:
    out = np.full((n_layers, n_heads, n_layers, n_heads), np.nan)
    for l2 in range(n_layers):
        for h2 in range(n_heads):
            W_X = p[f"blocks.{l2}.attn.W_{which.upper()}"][h2]
            for l1 in range(l2):
                for h1 in range(n_heads):
                    W_O = p[f"blocks.{l1}.attn.W_O"][h1]
                    out[l2, h2, l1, h1] = np.linalg.norm(W_O @ W_X) / (np.linalg.norm(W_O) * np.linalg.norm(W_X))
    return out


COMPOSITION_TYPES = [f"composition_{w}{s}" for w in "qkv" for s in ("", "_weights")]


@pytest.mark.parametrize("seed", [0, 1])
def test_composition_equals_full_circuit_reference(seed):
    model = random_model(LM_CFG, seed)
    p, L, H = weights(model), LM_CFG.n_layers, LM_CFG.n_heads
    out = compute(model, COMPOSITION_TYPES)
    for which in "qkv":
        ref = reference_composition(p, L, H, which)
        got = out[f"composition_{which}"]
        assert np.array_equal(np.isnan(got), np.isnan(ref))  # NaN exactly where src_layer >= layer
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=which)
        assert np.nanmin(ref) > 0.05  # random circuits: real numbers, not zeros
        weights_only = out[f"composition_{which}_weights"]
        np.testing.assert_allclose(weights_only, reference_weight_composition(p, L, H, which), rtol=0, atol=1e-6)
        # the two definitions differ (on random weights both sit near sqrt(d_head / d_model); planted cases below)
        assert np.nanmax(np.abs(weights_only - got)) > 0.01, which


def planted_composition_model(a: float, b: float):
    """Two layers, one head each, no LN. The src head's OV maps u_i -> w_i (i < 4, |OV| = 2); the dst
    head's QK = a * sum_i w_i u_i^T + b * sum_j p_j p_j^T (j < 4, W_Q = W_K's counterpart), so its
    query side reads the src's output space: Q-composition ||OV QK|| / (|OV| |QK|) = a / (2 sqrt(a^2 + b^2)),
    K-composition ||OV QK^T|| = 0 (QK^T reads u, OV writes only w), V-composition 0 (dst OV is zero)."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=1, vocab_size=4, n_ctx=4, attn_only=True,
                      layernorm=False, qkv_bias=False, out_bias=False)
    shaped = eqx.filter_eval_shape(build_model, cfg)
    model = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shaped)
    p = {k: np.array(v) for k, v in named_leaves(model).items()}
    U, W, P = 0, 4, 8  # subspace offsets: u_i = e_{U+i}, w_i = e_{W+i}, p_j = e_{P+j}
    i = np.arange(4)
    p["blocks.0.attn.W_V"][0, U + i, i] = 1.0
    p["blocks.0.attn.W_O"][0, i, W + i] = 1.0
    # QK = W_Q W_K^T: W_Q e-columns 0..3 read w_i, 4..7 read p_j; W_K e-columns 0..3 read u_i, 4..7 p_j
    p["blocks.1.attn.W_Q"][0, W + i, i] = a
    p["blocks.1.attn.W_K"][0, U + i, i] = 1.0
    p["blocks.1.attn.W_Q"][0, P + i, 4 + i] = b
    p["blocks.1.attn.W_K"][0, P + i, 4 + i] = 1.0
    return load_named_leaves(model, p)


def test_planted_composition_has_the_known_score():
    a, b = 3.0, 4.0
    model = planted_composition_model(a, b)
    out = compute(model, COMPOSITION_TYPES)
    np.testing.assert_allclose(out["composition_q"][1, 0, 0, 0], a / (2 * np.hypot(a, b)), rtol=1e-6)  # 0.3
    assert out["composition_k"][1, 0, 0, 0] == 0.0 and out["composition_v"][1, 0, 0, 0] == 0.0
    # weights only: ||W_O W_Q|| = 2a over |W_O| = 2, |W_Q| = 2 sqrt(a^2 + b^2): the same here ...
    np.testing.assert_allclose(out["composition_q_weights"][1, 0, 0, 0], a / (2 * np.hypot(a, b)), rtol=1e-6)
    # ... but W_K reads u, which the src's W_O never writes, and the full circuit agrees on K
    assert out["composition_k_weights"][1, 0, 0, 0] == 0.0
    for name in COMPOSITION_TYPES:
        assert np.isnan(out[name][0]).all() and np.isnan(out[name][1, :, 1]).all(), name


def test_planted_composition_where_weights_only_and_full_circuit_disagree():
    """A src head whose W_O writes into what the dst W_Q reads, but whose OV is rank-deficient
    there: the full circuit is 0 (its W_V reads nothing), the weights-only score is not."""
    model = planted_composition_model(3.0, 4.0)
    p = {k: np.array(v) for k, v in named_leaves(model).items()}
    p["blocks.0.attn.W_V"][:] = 0.0
    p["blocks.0.attn.W_V"][0, 0, 4] = 1.0  # the value reads u_0 into e-column 4, which W_O never writes
    out = compute(load_named_leaves(model, p), COMPOSITION_TYPES)
    assert out["composition_q"][1, 0, 0, 0] == 0.0  # OV = 0: composes with nothing
    np.testing.assert_allclose(out["composition_q_weights"][1, 0, 0, 0], 0.3, rtol=1e-6)


# -- direct logit attribution ---------------------------------------------------------------------

def clean_run(model, probe) -> dict:
    """The model's own forward on the probe batch (activations only; no scalars helper)."""
    return jax.vmap(model.call_with_all_aux)(probe.inputs)


def reference_dla(model, probe, *, fold_value_biases: bool) -> np.ndarray:
    """Per-head DLA in numpy from each head's pattern, ln1 output and weights (token probes).

    result_h[t] = sum_s A[t, s] v_h[s] W_O^h with v_h = ln1_out W_V^h + b_V^h; folded (TransformerLens
    fold_ln + fold_value_biases): v_h = (ln1_out - ln1.b) W_V^h, i.e. the LN-normalised input times
    the gain through W_V, no bias. Then TransformerLens' apply_ln_to_stack: centre, divide by the
    clean final-LN scale; times the final gain, dot W_U[:, next token] - mean_v W_U[:, v]; mean over
    positions 0..S-2 and sequences."""
    p, run = weights(model), clean_run(model, probe)
    tokens = np.asarray(probe.arrays["tokens"])
    W_U = p["W_U"]
    direction = W_U.T[tokens[:, 1:]] - W_U.mean(1)  # (B, S-1, d)
    final = np.asarray(run["layer_outputs"][-1]["resid_post"], np.float64)  # (B, S, d)
    centred = final - final.mean(-1, keepdims=True)
    scale = np.sqrt((centred**2).mean(-1, keepdims=True) + model.config.ln_eps)[:, :-1]  # (B, S-1, 1)
    out = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer, lo in enumerate(run["layer_outputs"]):
        x = np.asarray(lo["ln1_output"]["out"], np.float64)  # (B, S, d)
        A = np.asarray(lo["attn_output"]["pattern"], np.float64)  # (B, H, S, S)
        for h in range(model.config.n_heads):
            W_V, W_O = p[f"blocks.{layer}.attn.W_V"][h], p[f"blocks.{layer}.attn.W_O"][h]
            if fold_value_biases:
                v = (x - p[f"blocks.{layer}.ln1.b"]) @ W_V
            else:
                v = x @ W_V + p[f"blocks.{layer}.attn.b_V"][h]
            result = np.einsum("bts,bse->bte", A[:, h], v) @ W_O  # (B, S, d)
            r = result[:, :-1]
            r = (r - r.mean(-1, keepdims=True)) / scale * p["ln_final.w"]
            out[layer, h] = np.einsum("bpd,bpd->bp", r, direction).mean()
    return out


@pytest.fixture(scope="module")
def lm_model_and_probe():
    model = random_model(LM_CFG, 3)
    return model, scalars.probes.repeated_tokens(seed=0, batch=4, T=6, vocab_size=LM_CFG.vocab_size)


def test_direct_logit_attribution_unfolded_and_folded_equal_references(lm_model_and_probe):
    from scalars.engine._options import parse_type_options

    model, probe = lm_model_and_probe
    unfolded = compute(model, ["direct_logit_attribution"], probe)["direct_logit_attribution"]
    ref_unfolded = reference_dla(model, probe, fold_value_biases=False)
    np.testing.assert_allclose(unfolded, ref_unfolded, rtol=1e-4, atol=1e-5)
    options = parse_type_options(["direct_logit_attribution.fold_value_biases=true"])  # the CLI's --option
    assert options == {"direct_logit_attribution": {"fold_value_biases": True}}
    folded = compute(model, ["direct_logit_attribution"], probe, options)["direct_logit_attribution"]
    ref_folded = reference_dla(model, probe, fold_value_biases=True)
    np.testing.assert_allclose(folded, ref_folded, rtol=1e-4, atol=1e-5)
    assert np.abs(unfolded - folded).max() > 1e-2  # the biases are not small here: the option matters

    # unfolded - folded = the constant write c_h = (ln1.b W_V + b_V) W_O through the frozen final LN
    # and the unembedding at each scored position
    p, run = weights(model), clean_run(model, probe)
    tokens = np.asarray(probe.arrays["tokens"])
    direction = p["W_U"].T[tokens[:, 1:]] - p["W_U"].mean(1)
    scale = np.asarray(run["ln_final_output"]["scale"], np.float64)[:, :-1]  # (B, S-1, 1)
    for layer in range(LM_CFG.n_layers):
        for h in range(LM_CFG.n_heads):
            c = (p[f"blocks.{layer}.ln1.b"] @ p[f"blocks.{layer}.attn.W_V"][h] + p[f"blocks.{layer}.attn.b_V"][h]) \
                @ p[f"blocks.{layer}.attn.W_O"][h]
            through = ((c - c.mean()) * p["ln_final.w"] / scale * direction).sum(-1).mean()
            np.testing.assert_allclose(unfolded[layer, h] - folded[layer, h], through, rtol=1e-4, atol=1e-5)


def test_direct_logit_attribution_fold_option_is_checked_when_planned():
    dst = scalars.get_type("direct_logit_attribution")
    assert dst.options == {"fold_value_biases": False} and dst.version == 2
    with pytest.raises(ValueError, match="fold_value_biases must be true or false, got 'yes'"):
        dst.validate(scalars.registry.resolve_options(dst, {"fold_value_biases": "yes"}), None)


def test_folded_dla_is_zero_for_a_head_that_only_writes_its_value_bias():
    """A head with W_V = 0 and b_V != 0 writes b_V W_O everywhere: its unfolded DLA is that constant's
    direct effect (not 0), its folded DLA exactly 0 (TransformerLens's default puts it in b_O)."""
    model = random_model(LM_CFG, 4)
    p = {k: np.array(v) for k, v in named_leaves(model).items()}
    p["blocks.1.attn.W_V"][2] = 0.0
    p["blocks.1.ln1.b"][:] = 0.0
    p["blocks.1.attn.b_V"][2] *= 10.0  # a write large enough to see through the averaged unembedding
    model = load_named_leaves(model, p)
    probe = scalars.probes.repeated_tokens(seed=1, batch=3, T=5, vocab_size=LM_CFG.vocab_size)
    unfolded = compute(model, ["direct_logit_attribution"], probe)["direct_logit_attribution"]
    folded = compute(model, ["direct_logit_attribution"], probe,
                     {"direct_logit_attribution": {"fold_value_biases": True}})["direct_logit_attribution"]
    assert abs(folded[1, 2]) < 1e-6 and abs(unfolded[1, 2]) > 1e-2
    np.testing.assert_allclose(unfolded[1, 2], reference_dla(model, probe, fold_value_biases=False)[1, 2],
                               rtol=1e-4, atol=1e-6)


# -- mean ablation ----------------------------------------------------------------------------------

def next_token_loss(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean next-token cross-entropy over positions 0..S-2 and sequences, in float64."""
    logits = np.asarray(logits, np.float64)[:, :-1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    return float((logz - picked).mean())


def reference_mean_ablation(model, probe, per_position: bool) -> np.ndarray:
    """Loss with head (l, h)'s z replaced by its clean mean, one full forward of the model per head
    (`call_with_all_aux` with a z cache and a (H, 1, 1) head mask for every layer)."""
    L, H = model.config.n_layers, model.config.n_heads
    run = clean_run(model, probe)
    tokens = np.asarray(probe.arrays["tokens"])

    @eqx.filter_jit
    def ablated_logits(model, zs, masks):
        cache = {"layer_outputs": [{"attn_output": {"z": z}} for z in zs]}
        mask = {"layer_outputs": [{"attn_output": {"z": m}} for m in masks]}
        return jax.vmap(lambda x: model.call_with_all_aux(x, cache=cache, cache_mask=mask)["logits"])(probe.inputs)

    out = np.zeros((L, H))
    for layer in range(L):
        z = np.asarray(run["layer_outputs"][layer]["attn_output"]["z"], np.float64)  # (B, H, S, e)
        mean = z.mean(0) if per_position else np.broadcast_to(z.mean((0, 2))[:, None], z.shape[1:])  # (H, S, e)
        zs = [np.zeros(z.shape[1:], np.float32) for _ in range(L)]
        zs[layer] = mean.astype(np.float32)
        for h in range(H):
            masks = [np.zeros((H, 1, 1), bool) for _ in range(L)]
            masks[layer][h] = True
            out[layer, h] = next_token_loss(ablated_logits(model, zs, masks), tokens)
    return out


def test_mean_ablation_pooled_and_per_position_equal_full_forward_references(lm_model_and_probe):
    model, probe = lm_model_and_probe
    got = {ablation: compute(model, ["ablated_loss"], probe, {"ablated_loss": {"ablation": ablation}})["ablated_loss"]
           for ablation in ("mean", "mean_per_position")}
    pooled, per_position = reference_mean_ablation(model, probe, False), reference_mean_ablation(model, probe, True)
    np.testing.assert_allclose(got["mean"], pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["mean_per_position"], per_position, rtol=1e-5, atol=1e-5)
    assert np.abs(pooled - per_position).max() > 1e-3  # the two means give different effects here
    # ablated_loss_mean keeps the pooled definition
    np.testing.assert_allclose(compute(model, ["ablated_loss_mean"], probe)["ablated_loss_mean"], pooled,
                               rtol=1e-5, atol=1e-5)


def test_planted_per_position_mean_ablation_of_a_position_only_head_changes_nothing():
    """A head whose z depends on the position only (its queries, keys and values read the position
    embedding alone) is its own per-position mean: that ablation leaves the loss exactly clean, the pooled
    mean does not."""
    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=8, n_ctx=8, attn_only=True, layernorm=False,
                      qkv_bias=False, out_bias=False)
    shaped = eqx.filter_eval_shape(build_model, cfg)
    model = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shaped)
    p = {k: np.array(v) for k, v in named_leaves(model).items()}
    rng = np.random.default_rng(0)
    p["embed.W_E"][:, :8] = rng.normal(size=(8, 8))
    p["embed.W_pos"][:, 8:] = rng.normal(size=(8, 8))
    p["blocks.0.attn.W_Q"][0, 8:, :8] = 3 * np.eye(8)  # head 0: a pattern of the positions alone
    p["blocks.0.attn.W_K"][0, 8:, :8] = 3 * np.eye(8)
    p["blocks.0.attn.W_V"][0, 8:, :8] = np.eye(8)  # ... averaging position embeddings
    p["blocks.0.attn.W_O"][0, :8, :8] = rng.normal(size=(8, 8))
    p["W_U"][:8] = rng.normal(size=(8, 8))
    model = load_named_leaves(model, p)
    probe = scalars.probes.repeated_tokens(seed=2, batch=4, T=3, vocab_size=8)
    z0 = np.asarray(clean_run(model, probe)["layer_outputs"][0]["attn_output"]["z"])[:, 0]
    np.testing.assert_allclose(z0, np.broadcast_to(z0[:1], z0.shape), atol=1e-6)  # the same in every sequence
    loss = compute(model, ["loss"], probe)["loss"]
    per_position = compute(model, ["ablated_loss"], probe, {"ablated_loss": {"ablation": "mean_per_position"}})
    pooled = compute(model, ["ablated_loss"], probe, {"ablated_loss": {"ablation": "mean"}})
    np.testing.assert_allclose(per_position["ablated_loss"][0, 0], loss, rtol=1e-6)
    assert abs(pooled["ablated_loss"][0, 0] - loss) > 1e-2


def test_ablation_option_is_checked_when_planned():
    for name in ("ablated_loss", "ablated_accuracy", "ablated_loss_pattern_preserving", "layer_removal_loss"):
        dst = scalars.get_type(name)
        for ok in ("zero", "mean", "mean_per_position"):
            dst.validate(scalars.registry.resolve_options(dst, {"ablation": ok}), None)
        with pytest.raises(ValueError, match="ablation must be one of zero, mean, mean_per_position, got 'per_pos'"):
            dst.validate(scalars.registry.resolve_options(dst, {"ablation": "per_pos"}), None)


# -- exact averages over a large probe -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.big_memory
def test_pattern_means_over_the_78400_sequence_icl_dynamics_probe_agree_with_float64(tmp_path):
    """The mean attention pattern (and the scores read from it) over the full icl-dynamics probe, at
    the trained fixture checkpoint, against float64 means of the same float32 patterns: <= 1e-6.
    One float32 dot over all 78,400 sequences is farther off (what the blocked mean replaced)."""

    from trainer.interop.icl_dynamics import import_icl_dynamics

    fixtures = FIXTURES / "icl-dynamics"
    run = tmp_path / "run"
    import_icl_dynamics([fixtures / "omniglot50_rl5_synthetic"], run,
                        exemplars=fixtures / "synthetic_data" / "train_classes_exemplar0.npy")
    info, config = scalars.engine.load_run_model_config(run)
    probe = scalars.engine.build_run_probe("icl_dynamics", run, info, config)
    assert probe.batch_size == 78_400
    model = scalars.load_model(run, 100_000)
    types = ["attention_pattern", "prev_token_score", "prev_token_score_corrected"]
    got = compute(model.model, types, probe)
    _, cache = scalars.run_with_cache(model, probe.inputs)
    patterns = [np.asarray(cache[f"blocks.{l}.attn.hook_pattern"]) for l in range(config.n_layers)]
    mean64 = np.stack([p.astype(np.float64).mean(0) for p in patterns])  # (layer, head, S, S)
    S = mean64.shape[-1]
    q = np.arange(1, S)
    a = mean64[:, :, q, q - 1]  # attention of query q on q-1
    want = {"attention_pattern": mean64, "prev_token_score": a.mean(-1),
            "prev_token_score_corrected": (a - (1 - a) / q).mean(-1)}
    for name in types:
        err = np.abs(got[name] - want[name]).max()
        assert err <= 1e-6, (name, err)
    one_dot = np.stack([(np.full((1, len(p)), 1 / len(p), np.float32) @ p.reshape(len(p), -1)).reshape(p.shape[1:])
                        for p in patterns])
    assert np.abs(one_dot - mean64).max() > 1e-6  # the single float32 dot misses the bound here
