"""Built-in types on hand-built models with known answers.

The planted model is attention-only without LayerNorm, with one-hot token and position
subspaces: head (0, 0) is an exact previous-token head (it copies the previous token into a
`prev` subspace), head (1, 0) an exact induction head (K-composition: its key reads `prev`, its
query the current token; it copies the attended token into an `out` subspace that the
unembedding reads; without a match it attends to BOS, which writes nothing), heads (0, 1) and
(1, 1) have zero weights: uniform attention, dead output.
"""

import equinox as eqx
import jax
import numpy as np
import pytest

import scalars
from trainer.model import ModelConfig, build_model, load_named_leaves, named_leaves


def zero_leaves(config):
    """Name -> zero numpy array for every parameter (from the shape template: no eager init)."""
    shaped = eqx.filter_eval_shape(build_model, config)
    model = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shaped)
    return model, {k: np.array(v) for k, v in named_leaves(model).items()}


V, T = 16, 6
S = 2 * T + 1
TOK, POS, PREV, OUT = 0, V, V + S, 2 * V + S  # subspace offsets in the residual stream
C = 15.0  # query/key gain: matching scores c^2/sqrt(e) ~ 40, so softmax is exact to ~1e-17
C_BOS = 10.6  # the induction head's fallback score on BOS, ~20: used only where nothing matches


def planted_model():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=2, vocab_size=V, n_ctx=S, attn_only=True, layernorm=False,
                      qkv_bias=False, out_bias=False)
    model, p = zero_leaves(cfg)
    p["embed.W_E"][np.arange(V), TOK + np.arange(V)] = 1.0
    p["embed.W_pos"][np.arange(S), POS + np.arange(S)] = 1.0
    # (0, 0) previous token: query at i matches key at i-1 through positions
    p["blocks.0.attn.W_Q"][0, POS + np.arange(S), np.arange(S)] = C
    p["blocks.0.attn.W_K"][0, POS + np.arange(S - 1), np.arange(1, S)] = C
    p["blocks.0.attn.W_V"][0, TOK + np.arange(V), np.arange(V)] = 1.0
    p["blocks.0.attn.W_O"][0, np.arange(V), PREV + np.arange(V)] = 1.0
    # (1, 0) induction: query = current token, key = previous token, copies the key's token;
    # with no match it rests on BOS, whose value is 0
    p["blocks.1.attn.W_Q"][0, TOK + np.arange(V), np.arange(V)] = C
    p["blocks.1.attn.W_K"][0, PREV + np.arange(V), np.arange(V)] = C
    p["blocks.1.attn.W_Q"][0, TOK + np.arange(V), V] = C_BOS
    p["blocks.1.attn.W_K"][0, POS + 0, V] = C_BOS
    p["blocks.1.attn.W_V"][0, TOK + np.arange(1, V), np.arange(1, V)] = 1.0
    p["blocks.1.attn.W_O"][0, np.arange(V), OUT + np.arange(V)] = 1.0
    p["W_U"][OUT + np.arange(V), np.arange(V)] = 10.0
    return load_named_leaves(model, p)


def distinct_repeats(batch=4, seed=0):
    """BOS + T distinct non-BOS tokens + the same T (no accidental repeats inside a half)."""
    rng = np.random.default_rng(seed)
    first = np.stack([rng.permutation(np.arange(1, V))[:T] for _ in range(batch)])
    tokens = np.concatenate([np.zeros((batch, 1), np.int64), first, first], axis=1)
    return scalars.probes.from_tokens(tokens, name="distinct_repeats", T=T, vocab_size=V)


# paired-probe (patching) types have their own planted tests in test_patching.py
LM_TYPES = [t.name for t in scalars.list_types()  # SGLD estimators (opt-in): test_llc.py
            if t.requires in (None, "lm") and t.probe != "default_pair" and not t.opt_in]


@pytest.fixture(scope="module")
def planted():
    from scalars.engine._plan import applicable_types

    model = planted_model()
    types = [n for n in LM_TYPES if n in applicable_types(model.config)]  # attention-only: no neuron types
    fn = scalars.make_compute_fn(types, model.config, distinct_repeats())
    return {k: np.asarray(v) for k, v in fn(eqx.filter(model, eqx.is_array)).items()}


def uniform_mean(rows):
    return np.mean([1.0 / (i + 1) for i in rows])


def test_planted_attention_scores(planted):
    prev, ind, dup = planted["prev_token_score"], planted["induction_score"], planted["duplicate_token_score"]
    assert abs(prev[0, 0] - 1.0) < 1e-3
    assert abs(ind[1, 0] - 1.0) < 1e-3
    assert abs(planted["prev_token_score_corrected"][0, 0] - 1.0) < 1e-3
    for layer in (0, 1):  # the uniform heads: the analytic mean of 1/(i+1) over the definition's rows
        np.testing.assert_allclose(prev[layer, 1], uniform_mean(range(1, 2 * T + 1)), rtol=1e-6)
        np.testing.assert_allclose(ind[layer, 1], uniform_mean(range(T + 1, 2 * T + 1)), rtol=1e-6)
        np.testing.assert_allclose(dup[layer, 1], uniform_mean(range(T + 1, 2 * T + 1)), rtol=1e-6)
        np.testing.assert_allclose(planted["attention_entropy"][layer, 1], np.mean(np.log(np.arange(1, S + 1))),
                                   rtol=1e-6)
        assert abs(planted["prev_token_score_corrected"][layer, 1]) < 1e-6  # chance-corrected: 0
    assert planted["attention_entropy"][0, 0] < 1e-3 and planted["attention_entropy"][1, 0] < 1e-3


def test_planted_head_detector_follows_transformer_lens_mul(planted):
    # "mul" divides by all attention (S rows): a perfect induction head scores T / S
    np.testing.assert_allclose(planted["head_detector_score"][1, 0], T / S, atol=1e-3)
    model = planted_model()
    fn = scalars.make_compute_fn(["head_detector_score"], model.config, distinct_repeats(),
                                 options={"head_detector_score": {"detection": "previous_token_head"}})
    scores = np.asarray(fn(eqx.filter(model, eqx.is_array))["head_detector_score"])
    np.testing.assert_allclose(scores[0, 0], (S - 1) / S, atol=1e-3)
    np.testing.assert_allclose(scores[0, 1], uniform_mean(range(1, S)) * (S - 1) / S, rtol=1e-5)


def test_planted_ablations(planted):
    loss = planted["loss"]
    np.testing.assert_allclose(loss, np.log(V) * (T + 1) / (2 * T), rtol=1e-3)  # only the first half is unknown
    np.testing.assert_allclose(planted["ablated_loss"][1, 0], np.log(V), rtol=1e-5)  # the induction head gone
    np.testing.assert_allclose(planted["ablated_loss"][0, 0], np.log(V), rtol=1e-3)  # ... or its K-composition
    assert planted["ablated_accuracy"][1, 0] == 0.0
    for layer in (0, 1):  # dead heads (W_O = 0): exactly no effect
        assert planted["ablated_loss"][layer, 1] == loss
        assert planted["ablated_accuracy"][layer, 1] == planted["accuracy"]
        assert planted["direct_logit_attribution"][layer, 1] == 0.0
    np.testing.assert_allclose(planted["layer_removal_loss"][1], planted["ablated_loss"][1, 0], rtol=1e-6)
    np.testing.assert_allclose(planted["logit_lens_loss"][-1], loss, rtol=1e-6)
    assert planted["direct_logit_attribution"][1, 0] > 1.0
    assert planted["accuracy"] >= (T - 1) / (2 * T)  # the repeated half (first-half argmaxes are ties)


def test_planted_composition_and_reconstitution(planted):
    # full circuits: OV^src maps tok_i -> prev_i (|OV| = 4); QK^dst = C^2 tok_i prev_i^T + C_BOS^2 tok_i pos_0^T
    # (|QK| = 4 sqrt(C^4 + C_BOS^4)); OV QK^T = C^2 tok_i tok_i^T (norm 4 C^2)
    np.testing.assert_allclose(planted["composition_k"][1, 0, 0, 0], C**2 / (4 * np.sqrt(C**4 + C_BOS**4)), rtol=1e-5)
    # weights only: ||W_O W_K|| = 4C (16 entries C); ||W_O|| = 4; ||W_K|| also holds the BOS fallback entry
    np.testing.assert_allclose(planted["composition_k_weights"][1, 0, 0, 0], C / np.sqrt(16 * C**2 + C_BOS**2),
                               rtol=1e-5)
    for suffix in ("", "_weights"):
        assert planted[f"composition_q{suffix}"][1, 0, 0, 0] == 0.0 and planted[f"composition_v{suffix}"][1, 0, 0, 0] == 0.0
        assert planted[f"composition_k{suffix}"][1, 0, 0, 1] == 0.0  # dead source head
    for name in ("composition_q", "composition_k", "composition_v", "composition_k_weights",
                 "reconstituted_induction_q", "reconstituted_induction_k"):
        assert np.isnan(planted[name][0]).all() and np.isnan(planted[name][1, :, 1]).all()
    # the query side of (1, 0) reads the current token only: removing (0, 0) there changes nothing
    np.testing.assert_allclose(planted["reconstituted_induction_q"][1, 0, 0, 0], planted["induction_score"][1, 0],
                               atol=1e-6)
    # the key side reads (0, 0)'s output: without it no key matches and attention rests on BOS
    assert planted["reconstituted_induction_k"][1, 0, 0, 0] < 1e-3
    np.testing.assert_allclose(planted["reconstituted_induction_k"][1, 0, 0, 1], planted["induction_score"][1, 0],
                               atol=1e-6)


LOW, HIGH = slice(0, 8), slice(8, 16)


def routed_model(layer1_reads: str, seed=0):
    """Layer-0 heads write only to HIGH dims, which the unembedding ignores; layer 1 reads them
    only through its values (`"values"`, with Q = K = 0: fixed uniform patterns) or only through
    its keys (`"keys"`, with W_V reading LOW dims that layer 0 never writes)."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=12, n_ctx=16, attn_only=True, layernorm=False,
                      qkv_bias=False, out_bias=False)
    model, p = zero_leaves(cfg)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.normal(0.0, 0.7, shape).astype(np.float32)

    p["embed.W_E"][:, LOW] = rand(12, 8)
    p["embed.W_pos"][:, LOW] = rand(16, 8)
    for name in ("W_Q", "W_K", "W_V"):
        p[f"blocks.0.attn.{name}"][:, LOW] = rand(2, 8, 8)
    p["blocks.0.attn.W_O"][:, :, HIGH] = rand(2, 8, 8)
    if layer1_reads == "values":
        p["blocks.1.attn.W_V"][:, HIGH] = rand(2, 8, 8)
    else:
        p["blocks.1.attn.W_Q"][:, LOW] = rand(2, 8, 8)
        p["blocks.1.attn.W_K"][:, HIGH] = rand(2, 8, 8)
        p["blocks.1.attn.W_V"][:, LOW] = rand(2, 8, 8)
    p["blocks.1.attn.W_O"][:, :, LOW] = rand(2, 8, 8)
    p["W_U"][LOW] = rand(8, 12)
    return load_named_leaves(model, p)


@pytest.fixture(scope="module")
def routed():
    types = ["loss", "ablated_loss", "ablated_loss_pattern_preserving", "ablated_loss_value_preserving"]
    models = {kind: routed_model(kind) for kind in ("values", "keys")}
    probe = scalars.probes.repeated_tokens(seed=1, batch=4, T=6, vocab_size=12)
    fn = scalars.make_compute_fn(types, models["values"].config, probe)
    out = {kind: {k: np.asarray(v) for k, v in fn(eqx.filter(m, eqx.is_array)).items()} for kind, m in models.items()}
    assert fn.trace_count == 1
    return out


def test_value_path_only(routed):
    r = routed["values"]
    effect = r["ablated_loss"][0] - r["loss"]
    assert np.abs(effect).min() > 1e-3
    np.testing.assert_allclose(r["ablated_loss_pattern_preserving"][0], r["ablated_loss"][0], atol=1e-6)
    np.testing.assert_allclose(r["ablated_loss_value_preserving"][0], r["loss"], atol=1e-6)


def test_key_path_only(routed):
    r = routed["keys"]
    effect = r["ablated_loss"][0] - r["loss"]
    assert np.abs(effect).min() > 1e-3
    np.testing.assert_allclose(r["ablated_loss_value_preserving"][0], r["ablated_loss"][0], atol=1e-6)
    np.testing.assert_allclose(r["ablated_loss_pattern_preserving"][0], r["loss"], atol=1e-6)


def test_planted_attention_pattern(planted):
    A = planted["attention_pattern"]  # (layer, head, query_pos, key_pos), mean over the probe batch
    assert A.shape == (2, 2, S, S)
    q = np.arange(S)
    prev = np.zeros((S, S))
    prev[q[1:], q[1:] - 1], prev[0, 0] = 1.0, 1.0  # the previous-token head; BOS attends to itself
    np.testing.assert_allclose(A[0, 0], prev, atol=1e-4)
    rows = np.arange(T + 1, 2 * T + 1)  # the induction head: the token after the earlier copy
    np.testing.assert_allclose(A[1, 0, rows, rows - T + 1], 1.0, atol=1e-4)
    np.testing.assert_allclose(A[1, 0, 1:T + 1, 0], 1.0, atol=1e-4)  # no earlier copy yet: BOS
    uniform = np.tril(np.ones((S, S))) / (q[:, None] + 1)
    for layer in (0, 1):  # zero weights: uniform over the causal prefix
        np.testing.assert_allclose(A[layer, 1], uniform, rtol=1e-6, atol=1e-7)
