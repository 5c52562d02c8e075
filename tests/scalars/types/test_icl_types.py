"""icl-dynamics types: clamped-pattern progress measures and induction_strength, on planted models with known answers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except

import scalars
from scalars.types._icl import induction_strengths, previous_token_pattern
from trainer.model import ModelConfig, build_model, load_named_leaves, named_leaves

C, K = 4, 6.0  # labels; logit a planted copier head writes for the label it attends to
PLANT_CFG = ModelConfig(head="classifier", d_in=4, n_labels=C, n_layers=2, d_model=16, n_heads=2, attn_only=True,
                        layernorm=False, positional="rope", qkv_bias=False, out_bias=False, n_ctx=16)
RANDOM_CFG = ModelConfig(head="classifier", d_in=6, n_labels=5, n_layers=2, d_model=16, n_heads=4, d_mlp=32,
                         positional="rope", n_ctx=16)
CLAMPS = ["prev_token_clamp_loss", "induction_clamp_loss"]


def planted_copier(copier_layer: int):
    """Attention-only, no LN, W_Q = W_K = 0 (uniform causal attention). Label c is embedded as e_c (dims 0..3),
    exemplars in dims 4..7; head 0 of `copier_layer` copies the label dims it attends to into dims 8..11 times K,
    and the unembedding reads dims 8..11: logits = K * (attention on each label's tokens)."""
    shapes = jax.eval_shape(lambda: named_leaves(build_model(PLANT_CFG)))
    leaves = {n: np.zeros(s.shape, np.float32) for n, s in shapes.items()}
    leaves["embed.W_lab"][np.arange(C), np.arange(C)] = 1.0
    leaves["embed.W_ex"][np.arange(4), 4 + np.arange(4)] = 1.0
    leaves[f"blocks.{copier_layer}.attn.W_V"][0, np.arange(C), np.arange(C)] = 1.0
    leaves[f"blocks.{copier_layer}.attn.W_O"][0, np.arange(C), 8 + np.arange(C)] = K
    leaves["W_U"][8 + np.arange(C), np.arange(C)] = 1.0
    template = eqx.filter_eval_shape(build_model, PLANT_CFG)
    return load_named_leaves(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template), leaves)


def paper_probe(n=40, seed=0, d_in=4, n_labels=C):
    """`A la B lb Q` sequences: distinct context labels, query = item ci, target = its label."""
    rng = np.random.default_rng(seed)
    l0 = rng.integers(0, n_labels, n)
    l1 = (l0 + rng.integers(1, n_labels, n)) % n_labels
    ci = rng.integers(0, 2, n)
    labels = np.stack([l0, l1, np.where(ci == 0, l0, l1)], 1)
    examples = rng.normal(size=(n, 3, d_in))
    examples[:, 2] = examples[np.arange(n), ci]
    return scalars.probes.from_classifier_arrays(examples, labels, ci, name="icl_dynamics")


def ce(logits, target):
    return float(np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(len(target)), target]))


def label_logits(weights_on_items, labels):
    """logits = K * sum over context items of (attention on item's label token) * e_label."""
    out = np.zeros((labels.shape[0], C))
    for i in range(labels.shape[1] - 1):
        out[np.arange(len(labels)), labels[:, i]] += K * weights_on_items[:, i]
    return out


def compute(types, model, probe, head_batching="map"):
    fn = scalars.make_compute_fn(types, model.config, probe, head_batching=head_batching)
    return {k: np.asarray(v) for k, v in fn(eqx.filter(model, eqx.is_array)).items()}


def test_planted_previous_token_clamp_known_answers():
    probe = paper_probe()
    lab = np.asarray(probe.arrays["labels"])
    target, n = lab[:, -1], len(lab)
    out = compute(CLAMPS + ["loss"], planted_copier(0), probe)
    # head (0, 0) on the previous token: the query (position 4) reads label token l1 only
    on_l1 = ce(label_logits(np.tile([0.0, 1.0], (n, 1)), lab), target)
    # otherwise head (0, 0) attends uniformly over the 5 positions: 1/5 on each label token
    uniform = ce(label_logits(np.full((n, 2), 0.2), lab), target)
    np.testing.assert_allclose(out["prev_token_clamp_loss"], [[on_l1, uniform], [uniform, uniform]], rtol=1e-5)
    np.testing.assert_allclose(out["loss"], uniform, rtol=1e-5)
    assert on_l1 > 1.0 > uniform  # half the targets are l0: a previous-token copier is wrong on them
    # the induction clamp in layer 0 plants head (0, 0) on the correct label: loss log(e^K + C - 1) - K
    perfect = float(np.log(np.exp(K) + C - 1) - K)
    np.testing.assert_allclose(out["induction_clamp_loss"][0], [perfect, np.log(C)], rtol=1e-5)
    np.testing.assert_allclose(out["induction_clamp_loss"][1], [uniform, uniform], rtol=1e-5)


def test_planted_induction_clamp_known_answers():
    probe = paper_probe(seed=1)
    lab = np.asarray(probe.arrays["labels"])
    target, n = lab[:, -1], len(lab)
    out = compute(CLAMPS, planted_copier(1), probe)
    perfect = float(np.log(np.exp(K) + C - 1) - K)
    uniform = ce(label_logits(np.full((n, 2), 0.2), lab), target)
    # (1, 0): the copier given the perfect match; (1, 1): the copier removed, head 1 copies nothing: log C
    np.testing.assert_allclose(out["induction_clamp_loss"][1], [perfect, np.log(C)], rtol=1e-5)
    np.testing.assert_allclose(out["induction_clamp_loss"][0], [uniform, uniform], rtol=1e-5)  # layer 0 writes nothing
    on_l1 = ce(label_logits(np.tile([0.0, 1.0], (n, 1)), lab), target)
    np.testing.assert_allclose(out["prev_token_clamp_loss"][1], [on_l1, uniform], rtol=1e-5)


def test_induction_clamp_without_correct_index_matches_by_class():
    """Four context items: the query's class twice (same label), two others; one sequence has no match."""
    labels = np.array([[0, 1, 0, 2, 0], [3, 1, 2, 1, 1], [0, 1, 0, 3, 2]])
    classes = np.array([[7, 8, 7, 9, 7], [5, 6, 4, 6, 6], [1, 2, 3, 4, 5]])
    probe = scalars.probes.from_classifier_arrays(np.random.default_rng(0).normal(size=(3, 5, 4)), labels, name="icl",
                                           classes=classes)
    out = compute(["induction_clamp_loss"], planted_copier(1), probe)
    perfect = float(np.log(np.exp(K) + C - 1) - K)
    # the third sequence has no matching item: its query row stays uniform over 9 positions (1/9 per label token)
    unclamped = ce(label_logits(np.full((1, 4), 1 / 9), labels[2:]), labels[2:, -1])
    np.testing.assert_allclose(out["induction_clamp_loss"][1, 0], (2 * perfect + unclamped) / 3, rtol=1e-5)
    # matching by label when there is no classes array: same answer here (matching labels = matching classes)
    by_label = scalars.probes.from_classifier_arrays(probe.arrays["examples"], labels, name="icl")
    np.testing.assert_allclose(compute(["induction_clamp_loss"], planted_copier(1), by_label)["induction_clamp_loss"],
                               out["induction_clamp_loss"], rtol=1e-6)


def test_previous_token_pattern():
    np.testing.assert_array_equal(np.asarray(previous_token_pattern(4)),
                                  [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])


# ------------------------------------------------------------------------------ fast == naive


def random_model(config, seed, scale=0.4):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def naive_clamps(model, probe):
    """Every (layer, head): one full forward of the whole model with a cache/cache_mask, python loops."""
    ex, lab = jnp.asarray(probe.arrays["examples"]), jnp.asarray(probe.arrays["labels"])
    B, P = lab.shape
    T, L, H = 2 * P - 1, model.config.n_layers, model.config.n_heads
    ci = np.asarray(probe.arrays["correct_index"])
    target = np.asarray(lab[:, -1])

    @eqx.filter_jit
    def forward(model, cache, mask):
        def one(e, l, c, m):
            entries = {"layer_outputs": {layer: {"attn_output": v} for layer, v in c.items()}}
            masks = {"layer_outputs": {layer: {"attn_output": v} for layer, v in m.items()}}
            return model.call_with_all_aux({"examples": e, "labels": l}, cache=entries, cache_mask=masks)["logits"]

        return jax.vmap(one)(ex, lab, cache, mask)

    def loss(cache, mask):
        return ce(np.asarray(forward(model, cache, mask), np.float64)[:, -1], target)

    prev = np.zeros((L, H))
    ind = np.zeros((L, H))
    e = model.config.d_head
    for layer in range(L):
        for h in range(H):
            pat = np.zeros((B, H, T, T), np.float32)
            pat[:, h, np.arange(T), np.maximum(np.arange(T) - 1, 0)] = 1.0
            mask = np.zeros((B, H, T, T), bool)
            mask[:, h] = True
            prev[layer, h] = loss({layer: {"pattern": pat}}, {layer: {"pattern": mask}})
            pat = np.zeros((B, H, T, T), np.float32)
            pat[np.arange(B), h, T - 1, 2 * ci + 1] = 1.0
            mask = np.zeros((B, H, T, T), bool)
            mask[:, h, T - 1] = True
            z_mask = np.ones((B, H, T, e), bool)
            z_mask[:, h] = False
            ind[layer, h] = loss({layer: {"pattern": pat, "z": np.zeros((B, H, T, e), np.float32)}},
                                 {layer: {"pattern": mask, "z": z_mask}})
    return prev, ind


@pytest.fixture(scope="module")
def random_setup():
    probe = paper_probe(n=12, seed=3, d_in=6, n_labels=5)
    models = [random_model(RANDOM_CFG, seed) for seed in (0, 1)]
    return probe, models, [naive_clamps(m, probe) for m in models]


@pytest.mark.parametrize("head_batching", slow_except(["map", "vmap"], ['map']))
def test_clamps_fast_equal_naive_on_random_models(head_batching, random_setup):
    probe, models, naive = random_setup
    fn = scalars.engine.make_block_compute_fn(CLAMPS, RANDOM_CFG, probe, head_batching=head_batching)
    out = fn(scalars.engine.stack_params(models))  # both checkpoints in one program
    for i, (prev, ind) in enumerate(naive):
        fast = {k: np.asarray(v[i]) for k, v in out.items()}
        np.testing.assert_allclose(fast["prev_token_clamp_loss"], prev, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(fast["induction_clamp_loss"], ind, rtol=2e-5, atol=2e-5)
        assert np.ptp(fast["induction_clamp_loss"]) > 1e-3  # the heads differ: the clamps do something


# ----------------------------------------------------------------------------- induction_strength


def test_induction_strength_general_probe_known_answer():
    """Four context items, 2 matching the query: sum(match) - (2/2) * sum(other), per sequence."""
    labels = np.array([[0, 1, 0, 2, 0], [3, 3, 1, 2, 3]])
    probe = scalars.probes.from_classifier_arrays(np.zeros((2, 5, 3)), labels, name="icl")
    rng = np.random.default_rng(0)
    pattern = rng.random((2, 1, 9, 9)).astype(np.float32)  # (B, H=1, T, T)
    q = pattern[:, 0, -1]
    seq0 = q[0, 1] + q[0, 5] - (q[0, 3] + q[0, 7])
    seq1 = q[1, 1] + q[1, 3] - (2 / 2) * (q[1, 5] + q[1, 7])
    got = np.asarray(induction_strengths([jnp.asarray(pattern)], probe))
    np.testing.assert_allclose(got, [[(seq0 + seq1) / 2]], rtol=1e-6)
    # the paper's probe: the general formula equals A[q, 2ci+1] - A[q, 2(1-ci)+1]
    paper = paper_probe(n=8)
    pat = rng.random((8, 2, 5, 5)).astype(np.float32)
    ci = np.asarray(paper.arrays["correct_index"])
    want = (pat[np.arange(8), :, 4, 2 * ci + 1] - pat[np.arange(8), :, 4, 2 * (1 - ci) + 1]).mean(0)
    np.testing.assert_allclose(np.asarray(induction_strengths([jnp.asarray(pat)], paper))[0], want, rtol=1e-5)


def test_induction_strength_on_planted_copier_pattern():
    """The paper's formula through the engine: W_Q = W_K = 0 gives uniform attention, strength 0 in every head."""
    out = compute(["induction_strength"], planted_copier(1), paper_probe())
    np.testing.assert_allclose(out["induction_strength"], 0.0, atol=1e-7)
