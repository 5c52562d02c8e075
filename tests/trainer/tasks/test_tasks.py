"""Task samplers: induction LM, bursty ICL classification, mixtures, evals and the icl-dynamics probe."""

import dataclasses
import hashlib

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except

from trainer.tasks import (
    ICL_DYNAMICS_TRAIN_PAIRS,
    ICL_DYNAMICS_VAL_PAIRS,
    ICLDataConfig,
    ICLTaskConfig,
    InductionTaskConfig,
    MixtureTaskConfig,
    class_label_map,
    icl_dynamics_config,
    icl_dynamics_probe_for,
    icl_dynamics_probe_set,
    load_exemplars,
    load_h5_dataset,
    make_eval_sets,
    markov_transition_matrix,
    relabel_pair_split,
    repeated_tokens_probe,
    sample_batch,
    synthetic_clusters,
)
from tests._paths import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "icl-dynamics"
jit_sample = jax.jit(sample_batch, static_argnums=(0, 2), static_argnames=("with_info",))


# ---------------------------------------------------------------- induction


@pytest.mark.parametrize("filler", ["uniform", "markov"])
def test_induction_shapes_and_bos(filler):
    cfg = InductionTaskConfig(filler=filler)
    b = sample_batch(cfg, jax.random.PRNGKey(0), 16)
    assert set(b) == {"tokens", "loss_mask"}
    assert b["tokens"].shape == (16, 64) and b["tokens"].dtype == jnp.int32
    assert b["loss_mask"].shape == (16, 63) and b["loss_mask"].dtype == jnp.float32
    tok = np.asarray(b["tokens"])
    assert np.all(tok[:, 0] == 0) and np.all(tok[:, 1:] >= 1) and np.all(tok < 64)
    assert np.all(np.asarray(b["loss_mask"]) == 1.0)


@pytest.mark.parametrize(
    "cfg",
    [
        InductionTaskConfig(),
        InductionTaskConfig(filler="markov", bos_token=5),
        InductionTaskConfig(n_repeats=2, seq_len=80, segment_len_min=3, segment_len_max=20),
    ],
)
def test_induction_segment_really_repeats(cfg):
    b = sample_batch(cfg, jax.random.PRNGKey(1), 64, with_info=True)
    tok, starts, lens = (np.asarray(b[k]) for k in ("tokens", "segment_starts", "segment_len"))
    assert starts.shape == (64, 1 + cfg.n_repeats)
    assert np.all((lens >= cfg.segment_len_min) & (lens <= cfg.segment_len_max))
    assert len(set(lens.tolist())) > 3 and len(set(starts[:, 0].tolist())) > 3  # positions vary
    for t, s, n in zip(tok, starts, lens):
        assert t[0] == cfg.bos_token and np.sum(t == cfg.bos_token) == 1
        assert s[0] >= 1 and s[-1] + n <= cfg.seq_len and np.all(np.diff(s) >= n)
        for j in range(1, len(s)):
            np.testing.assert_array_equal(t[s[j] : s[j] + n], t[s[0] : s[0] + n])


def test_induction_copy_loss_mask():
    cfg = InductionTaskConfig(loss_on="copy")
    b = sample_batch(cfg, jax.random.PRNGKey(2), 32, with_info=True)
    for mask, s, n in zip(np.asarray(b["loss_mask"]), np.asarray(b["segment_starts"]), np.asarray(b["segment_len"])):
        expected = np.zeros(cfg.seq_len - 1)
        expected[s[1] : s[1] + n - 1] = 1.0  # targets s[1]+1 .. s[1]+n-1 (copy offsets >= 1)
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("filler", slow_except(["uniform", "markov"], ['markov']))
def test_induction_deterministic_and_jit(filler):
    cfg = InductionTaskConfig(filler=filler)
    key = jax.random.fold_in(jax.random.PRNGKey(3), 17)
    a, b, c = sample_batch(cfg, key, 8), sample_batch(cfg, key, 8), jit_sample(cfg, key, 8)
    if filler == "uniform":  # op-by-op is slow for the markov scan; one filler suffices
        with jax.disable_jit():
            c = sample_batch(cfg, key, 8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])
    other = sample_batch(cfg, jax.random.fold_in(jax.random.PRNGKey(3), 18), 8)
    assert not np.array_equal(a["tokens"], other["tokens"])


def test_markov_filler_follows_its_bigram_matrix():
    cfg = InductionTaskConfig(filler="markov")
    P = markov_transition_matrix(cfg)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(P[:, 0] == 0)
    b = sample_batch(cfg, jax.random.PRNGKey(4), 256, with_info=True)
    tok, starts, lens = (np.asarray(b[k]) for k in ("tokens", "segment_starts", "segment_len"))
    ll_markov = ll_uniform = 0.0
    for t, s, n in zip(tok, starts, lens):
        in_copy = np.zeros(cfg.seq_len, bool)
        for j in s:
            in_copy[j : j + n] = True
        nxt = np.flatnonzero(~in_copy[1:]) + 1  # filler positions
        ll_markov += np.log(P[t[nxt - 1], t[nxt]]).sum()
        ll_uniform += len(nxt) * np.log(1 / 63)
    assert ll_markov > ll_uniform + 1000


def test_repeated_tokens_probe():
    p = np.asarray(repeated_tokens_probe(jax.random.PRNGKey(5), 4, 10, 50))
    assert p.shape == (4, 21) and p.dtype == np.int32
    assert np.all(p[:, 0] == 0) and np.all(p[:, 1:] >= 1) and np.all(p < 50)
    np.testing.assert_array_equal(p[:, 1:11], p[:, 11:])
    q = np.asarray(repeated_tokens_probe(jax.random.PRNGKey(5), 4, 10, 50, bos_token=49))
    assert np.all(q[:, 0] == 49) and np.all(q[:, 1:] < 49)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seq_len=40), "seq_len 40 leaves 39 tokens"),
        (dict(segment_len_min=10, segment_len_max=5), "segment_len_min <= segment_len_max"),
        (dict(filler="zipf"), "filler must be one of"),
        (dict(bos_token=64), "outside the vocabulary"),
        (dict(loss_on="second"), "loss_on must be one of"),
    ],
)
def test_induction_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        InductionTaskConfig(**kw)


# ---------------------------------------------------------------- ICL data


SMALL_DATA = ICLDataConfig(n_classes=120, n_exemplars=4, dim=16, noise=0.1, seed=3)


@pytest.fixture(scope="module")
def data():
    return load_exemplars(SMALL_DATA)


def _cfg(**kw):
    base = dict(context_len=8, n_labels=5, class_split=(80, 0, 40), data=SMALL_DATA)
    return ICLTaskConfig(**{**base, **kw})


def _index_of(vectors, data):
    """Recover each vector's flat (class * n_exemplars + exemplar) index by exact lookup (noise_scale 0)."""
    table = {row.tobytes(): i for i, row in enumerate(np.asarray(data).reshape(-1, data.shape[-1]))}
    v = np.asarray(vectors)
    return np.array([table[row.tobytes()] for row in v.reshape(-1, v.shape[-1])]).reshape(v.shape[:-1])


def _class_of(vectors, data):
    return _index_of(vectors, data) // data.shape[1]


def test_icl_shapes_determinism_jit(data):
    cfg = _cfg(fewshot_relabel=True, noise_scale=0.05, zipf_alpha=0.5)
    key = jax.random.PRNGKey(0)
    a, b, c = sample_batch(cfg, key, 32, data), sample_batch(cfg, key, 32, data), jit_sample(cfg, key, 32, data)
    assert set(a) == {"examples", "labels"}
    assert a["examples"].shape == (32, 9, 16) and a["examples"].dtype == jnp.float32
    assert a["labels"].shape == (32, 9) and a["labels"].dtype == jnp.int32
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_allclose(a[k], c[k], rtol=1e-6, atol=1e-6)
    assert np.all((np.asarray(a["labels"]) >= 0) & (np.asarray(a["labels"]) < 5))


def test_icl_bursty_fraction_and_structure(data):
    cfg = _cfg(p_bursty=0.3, burstiness=3)
    b = sample_batch(cfg, jax.random.PRNGKey(1), 20_000, data, with_info=True)
    classes, bursty = np.asarray(b["classes"]), np.asarray(b["bursty"])
    assert abs(bursty.mean() - 0.3) < 0.015
    assert np.all(classes < 80)  # train classes only
    q_count = (classes[:, :-1] == classes[:, -1:]).sum(axis=1)
    assert np.all(q_count[bursty] == 3)
    for row in classes[bursty][:200]:  # the distractor is the other class seen 3 times
        vals, counts = np.unique(row[:-1], return_counts=True)
        assert sorted(counts.tolist())[-2:] == [3, 3]
    # Non-bursty contexts are i.i.d. uniform over 80 classes: the query shows up by chance only.
    assert abs(q_count[~bursty].mean() - 8 / 80) < 0.02
    labels = np.asarray(b["labels"])
    np.testing.assert_array_equal(labels, class_label_map(120, 5, 0)[classes])


def test_icl_zipf_class_frequencies(data):
    cfg = _cfg(zipf_alpha=1.0, p_bursty=0.0)
    b = sample_batch(cfg, jax.random.PRNGKey(2), 100_000, data, with_info=True)
    counts = np.bincount(np.asarray(b["classes"])[:, -1], minlength=80)[:80]
    ranks = np.arange(1, 21)
    slope = np.polyfit(np.log(ranks), np.log(counts[:20]), 1)[0]
    assert abs(slope + 1.0) < 0.08
    assert abs(counts[0] / counts[1] - 2.0) < 0.15
    uniform = sample_batch(_cfg(zipf_alpha=0.0), jax.random.PRNGKey(2), 40_000, data, with_info=True)
    u = np.bincount(np.asarray(uniform["classes"])[:, -1], minlength=80)
    assert u.max() / u.min() < 1.6


def test_icl_eval_needs_context_and_iwl_needs_weights(data):
    cfg = _cfg(fewshot_relabel=True)
    n = 4000
    evals = make_eval_sets(cfg, data, eval_seed=1, n=n)
    again = make_eval_sets(cfg, data, eval_seed=1, n=n)
    assert {"icl", "iwl", "icl_train"} <= set(evals)
    np.testing.assert_array_equal(evals["icl"]["labels"], again["icl"]["labels"])
    fixed = class_label_map(120, 5, 0)

    icl = evals["icl"]
    classes = _class_of(icl["examples"], data)
    assert np.all(classes >= 80)  # held-out test classes
    target = np.asarray(icl["labels"])[:, -1]
    # A context-blind model (any function of the query alone, here the fixed map) is at chance.
    acc_blind = np.mean(fixed[classes[:, -1]] == target)
    assert abs(acc_blind - 1 / 5) < 0.03
    # Copying the label of a same-class context item solves it.
    same = classes[:, :-1] == classes[:, -1:]
    assert np.all(same.any(axis=1))
    copied = np.asarray(icl["labels"])[np.arange(n), same.argmax(axis=1)]
    assert np.all(copied == target)

    iwl = evals["iwl"]
    classes = _class_of(iwl["examples"], data)
    assert np.all(classes < 80)
    assert not np.any(classes[:, :-1] == classes[:, -1:])  # the query class is never in context
    np.testing.assert_array_equal(fixed[classes], np.asarray(iwl["labels"]))  # oracle accuracy 1.0

    # The training sampler with fewshot_relabel is also context-only for the fixed map.
    tr = sample_batch(cfg, jax.random.PRNGKey(3), n, data, with_info=True)
    acc = np.mean(fixed[np.asarray(tr["classes"])[:, -1]] == np.asarray(tr["labels"])[:, -1])
    assert abs(acc - 1 / 5) < 0.03


def test_icl_mixture(data):
    mix = MixtureTaskConfig(components=(_cfg(p_bursty=0.0), _cfg(p_bursty=1.0, fewshot_relabel=True)), weights=(1, 3))
    b = sample_batch(mix, jax.random.PRNGKey(4), 20_000, data, with_info=True)
    comp = np.asarray(b["component"])
    assert abs(comp.mean() - 0.75) < 0.015
    np.testing.assert_array_equal(np.asarray(b["bursty"]), comp == 1)
    jitted = jit_sample(mix, jax.random.PRNGKey(4), 20_000, data, with_info=True)
    for k in b:
        np.testing.assert_array_equal(b[k], jitted[k])
    assert hash(mix) == hash(MixtureTaskConfig(components=list(mix.components), weights=[1.0, 3.0]))
    bad = MixtureTaskConfig(components=(_cfg(), _cfg(context_len=4, burstiness=2)), weights=(1, 1))
    with pytest.raises(ValueError, match="mixture component 1 gives batch"):
        sample_batch(bad, jax.random.PRNGKey(0), 4, data)
    with pytest.raises(ValueError, match="one weight per component"):
        MixtureTaskConfig(components=(_cfg(),), weights=(1, 2))


def test_icl_config_from_json_values_is_hashable():
    cfg = ICLTaskConfig(class_split=[10, 0, 5], label_pairs=[[0, 1]], data={"n_classes": 15, "dim": 8})
    assert cfg.class_split == (10, 0, 5) and cfg.label_pairs == ((0, 1),)
    assert isinstance(cfg.data, ICLDataConfig) and hash(cfg) == hash(dataclasses.replace(cfg))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(burstiness=5), "burstiness 5 needs 10 context slots"),
        (dict(p_bursty=1.5), "p_bursty must be a probability"),
        (dict(label_pairs=((1, 1),)), "must be two different labels"),
        (dict(sequence_format="icl_dynamics"), "sequence_format 'icl_dynamics' needs label_pairs"),
        (dict(sequence_format="icl_dynamics", label_pairs=((0, 1),)), "context_len == 2 \\* burstiness"),
        (dict(sequence_format="paper"), "unknown sequence_format 'paper'; choose one of bursty, icl_dynamics"),
        (dict(class_split=(0, 1, 1)), "class_split must be three non-negative counts"),
    ],
)
def test_icl_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_the_flag_earlier_runs_stored_reads_as_the_icl_dynamics_sequence_format():
    """Runs written before sequence formats stored `icl_dynamics_mode`; their config still reads, the same."""
    from trainer.presets import PRESETS
    from trainer.tasks import task_config, task_probe_defaults

    section = {k: v for k, v in PRESETS["icl-dynamics"]["task"].items() if k != "sequence_format"}
    now = task_config({"task": PRESETS["icl-dynamics"]["task"]})[1]
    before = task_config({"task": {**section, "icl_dynamics_mode": True}})[1]
    assert before == now and now.sequence_format == "icl_dynamics"
    assert task_config({"task": {**section, "icl_dynamics_mode": False}})[1].sequence_format == "bursty"
    assert task_probe_defaults({"task": {**section, "icl_dynamics_mode": True}})["default"] == "icl_dynamics"


def test_a_registered_sequence_format_is_sampled_and_evaluated_as_it_says(data):
    """A new format is one registration: here the query class alone is repeated (no distractor) and
    labelled by a label pair, and its extra evaluation set is made from its own sampler fields."""
    from trainer.tasks import SEQUENCE_FORMATS, SequenceFormat, make_eval_sets, register_sequence_format

    register_sequence_format(SequenceFormat(
        name="query_pairs", description="test format", context_slots=lambda cfg: cfg.burstiness,
        training=lambda cfg: dict(p_bursty=1.0, distractor=False, relabel="pairs"), eval_relabel="pairs",
        extra_evals=lambda cfg, blocks: {"pairs_only_first": dict(label_pairs=cfg.label_pairs[:1])},
        eval_aliases={"also_icl": "icl"}))
    try:
        cfg = _cfg(sequence_format="query_pairs", label_pairs=((0, 1), (2, 3)), burstiness=5)  # 5 slots: fits 8
        batch = sample_batch(cfg, jax.random.PRNGKey(0), 64, data, with_info=True)
        classes, labels = np.asarray(batch["classes"]), np.asarray(batch["labels"])
        query = classes[:, -1:]
        assert ((classes[:, :-1] == query).sum(1) == 5).all()  # the query class `burstiness` times, always
        q_label = np.take_along_axis(labels[:, :-1], np.argmax(classes[:, :-1] == query, 1)[:, None], 1)[:, 0]
        other = labels[:, :-1][classes[:, :-1] != query].reshape(64, 3)
        pairs = {tuple(sorted((int(a), int(b)))) for a, b in zip(q_label, other[:, 0])}
        assert pairs <= {(0, 1), (2, 3)} and len(pairs) == 2  # labelled by a training pair
        evals = make_eval_sets(cfg, data, eval_seed=0, n=8)
        assert {"icl", "icl_train", "iwl", "pairs_only_first", "also_icl"} <= set(evals)
        assert evals["also_icl"] is evals["icl"]
        first = np.asarray(evals["pairs_only_first"]["labels"])
        assert set(np.unique(first[:, :-1])) <= {0, 1}  # only the first pair's labels
    finally:
        SEQUENCE_FORMATS.pop("query_pairs")


def test_icl_data_errors(data):
    with pytest.raises(ValueError, match=r"class_split \(200, 0, 40\) needs 240 classes but the data has 120"):
        sample_batch(_cfg(class_split=(200, 0, 40)), jax.random.PRNGKey(0), 2, data)
    with pytest.raises(ValueError, match="pass data=load_exemplars"):
        sample_batch(_cfg(), jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="unknown task config type dict"):
        sample_batch({}, jax.random.PRNGKey(0), 2)


def test_h5_round_trip_and_errors(tmp_path):
    arr = np.random.default_rng(0).standard_normal((3, 4, 5))
    path = tmp_path / "feat.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("resnet18/224/feat", data=arr)
        f.create_dataset("other/flat", data=arr[0])
    out = load_h5_dataset(path)
    assert out.dtype == np.float32 and out.shape == (3, 4, 5) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr.astype(np.float32))
    np.testing.assert_array_equal(load_exemplars(ICLDataConfig(source="h5", path=str(path))), out)
    with pytest.raises(ValueError, match="does not exist"):
        load_h5_dataset(tmp_path / "missing.h5")
    available = r"available datasets: \['other/flat', 'resnet18/224/feat'\]"
    with pytest.raises(ValueError, match=r"no dataset at key 'nope'; " + available):
        load_h5_dataset(path, key="nope")
    with pytest.raises(ValueError, match=r"has shape \(4, 5\), expected rank 3 \(classes, exemplars, dim\)"):
        load_h5_dataset(path, key="other/flat")
    with pytest.raises(ValueError, match="needs a path"):
        ICLDataConfig(source="h5")


def test_synthetic_clusters_match_fixture_data():
    feat = synthetic_clusters(0, 1623, 5, 512, 0.1)
    assert feat.dtype == np.float32 and feat.shape == (1623, 5, 512)
    assert hashlib.sha256(feat.tobytes()).hexdigest() == (
        "cfbb21a2f24637b2b6e1c05af2303d5a812560a18cd2d090968b50d2035b1a3e"
    )
    shipped = np.load(FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy")
    np.testing.assert_array_equal(feat[:50, 0], shipped)


# ---------------------------------------------------------------- icl-dynamics


def test_relabel_pair_split_reproduces_fixture_pairs():
    split = relabel_pair_split(5, (8, 2, 0), seed=20)
    assert split["train"] == ICL_DYNAMICS_TRAIN_PAIRS
    assert split["val"] == ICL_DYNAMICS_VAL_PAIRS and split["test"] == ()


@pytest.fixture(scope="module")
def dyn():
    cfg = icl_dynamics_config(
        class_split=(20, 10, 10), exemplar_split=(1, 3, 0),
        data=ICLDataConfig(n_classes=40, n_exemplars=4, dim=8, noise=0.1),
    )
    return cfg, load_exemplars(cfg.data)


def test_icl_dynamics_training_sequences(dyn):
    cfg, data = dyn
    b = sample_batch(cfg, jax.random.PRNGKey(0), 4000, data, with_info=True)
    classes, labels, x = (np.asarray(b[k]) for k in ("classes", "labels", "examples"))
    assert x.shape == (4000, 3, 8)
    np.testing.assert_array_equal(x, data[classes, 0])  # exemplar 0 only
    assert np.all(classes < 20) and np.all(classes[:, 0] != classes[:, 1])
    q_first = classes[:, 0] == classes[:, 2]
    assert np.all(q_first | (classes[:, 1] == classes[:, 2]))
    assert abs(q_first.mean() - 0.5) < 0.04  # Q D Q and D Q Q equally often
    q_lab = np.where(q_first, labels[:, 0], labels[:, 1])
    d_lab = np.where(q_first, labels[:, 1], labels[:, 0])
    np.testing.assert_array_equal(labels[:, 2], q_lab)
    pairs = {tuple(sorted(p)) for p in zip(q_lab.tolist(), d_lab.tolist())}
    assert pairs == set(ICL_DYNAMICS_TRAIN_PAIRS)
    assert abs(np.mean(q_lab < d_lab) - 0.5) < 0.04  # both orientations


def test_icl_dynamics_eval_sets(dyn):
    cfg, data = dyn
    ev = make_eval_sets(cfg, data, eval_seed=1, n=500)
    assert set(ev) == {"icl", "icl_train", "iwl", "fsl_train", "fsl_val_rl", "fsl_train_valex", "fsl_test_class"}
    test_cls = _class_of(ev["fsl_test_class"]["examples"], data)
    assert np.all(test_cls >= 30)
    val_pairs = {tuple(sorted(p)) for p in np.asarray(ev["fsl_val_rl"]["labels"])[:, :2].tolist()}
    assert val_pairs == set(ICL_DYNAMICS_VAL_PAIRS)
    assert np.all(_index_of(ev["fsl_train_valex"]["examples"], data) % 4 >= 1)  # exemplars 1..3 (val block)


def test_icl_dynamics_probe_set_order_and_count():
    x = np.load(FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy")
    probe = icl_dynamics_probe_set(x, ICL_DYNAMICS_TRAIN_PAIRS)
    pairs = list(ICL_DYNAMICS_TRAIN_PAIRS) + [(b, a) for a, b in ICL_DYNAMICS_TRAIN_PAIRS]
    ctx = [(c0, l0, c1, l1) for l0, l1 in pairs for c0 in range(50) for c1 in range(50) if c1 != c0]
    expected_classes = [(c0, c1, c0) for c0, _, c1, _ in ctx] + [(c0, c1, c1) for c0, _, c1, _ in ctx]
    expected_labels = [(l0, l1, l0) for _, l0, _, l1 in ctx] + [(l0, l1, l1) for _, l0, _, l1 in ctx]
    assert len(ctx) == 39_200 and probe["labels"].shape == (78_400, 3)
    np.testing.assert_array_equal(probe["classes"], np.array(expected_classes))
    np.testing.assert_array_equal(probe["labels"], np.array(expected_labels))
    np.testing.assert_array_equal(probe["correct_index"], np.repeat([0, 1], 39_200))
    assert probe["examples"].shape == (78_400, 3, 512) and probe["examples"].dtype == np.float32
    for i in (0, 1, 48, 49, 2449, 39_199, 39_200, 50_000, 78_399):
        c0, c1, q = expected_classes[i]
        np.testing.assert_array_equal(probe["examples"][i], x[[c0, c1, q]])
        ci = probe["correct_index"][i]
        assert probe["labels"][i, ci] == probe["labels"][i, 2]
    cfg = icl_dynamics_config(class_split=(50, 0, 10), data=ICLDataConfig(n_classes=60, n_exemplars=5, dim=4))
    small = load_exemplars(cfg.data)
    np.testing.assert_array_equal(
        icl_dynamics_probe_for(cfg, small)["examples"][:5], small[:50, 0][np.array(expected_classes[:5])]
    )
