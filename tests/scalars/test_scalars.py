"""The scalars package: registry, probes, and the fast compute path against the naive reference."""

import re
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scalars
import scalars.reference
from scalars import dims
from trainer.model import ModelConfig, build_model

LM_CFG = ModelConfig(n_layers=3, d_model=16, n_heads=2, vocab_size=20, n_ctx=16)  # MLP + LN, learned positions
CLS_CFG = ModelConfig(head="classifier", d_in=6, n_labels=4, positional="rope", attn_only=True, n_layers=2,
                      d_model=16, n_heads=2, n_ctx=8)


def random_model(config, seed, scale=0.3):
    """A model with normal noise on every parameter (LN gains and biases included); numpy draws
    into the shape template, so no eager JAX initialisation is compiled."""
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def classifier_probe(name, seed, batch=6):
    rng = np.random.default_rng(seed)
    return scalars.probes.from_classifier_arrays(
        rng.normal(size=(batch, 3, 6)), rng.integers(0, 4, size=(batch, 3)), rng.integers(0, 2, size=batch), name=name
    )


def types_for(config):  # paired-probe (patching) types have their own fast == naive tests in test_patching.py;
    # opt-in SGLD estimators (llc, rllc) have theirs in test_llc.py; neuron types need an MLP
    from scalars.engine._plan import applicable_types

    applies = set(applicable_types(config))
    return [t.name for t in scalars.list_types() if t.name in applies and t.probe != "default_pair"]


def assert_close(fast, ref, what):
    for name, value in ref.items():
        np.testing.assert_allclose(np.asarray(fast[name]), value, rtol=1e-5, atol=1e-5, err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def lm_setup():
    models = [random_model(LM_CFG, seed) for seed in (1, 2)]
    probe = scalars.probes.repeated_tokens(seed=0, batch=4, T=5, vocab_size=LM_CFG.vocab_size)
    types = types_for(LM_CFG)
    naive = [scalars.reference.naive_compute(types, m, probe) for m in models]
    return models, probe, types, naive


@pytest.fixture(scope="module")
def cls_setup():
    models = [random_model(CLS_CFG, seed) for seed in (4, 5, 6)]
    probes = {name: classifier_probe(name, seed) for seed, name in enumerate(("icl", "iwl", "icl_dynamics"))}
    types = types_for(CLS_CFG)
    naive = [scalars.reference.naive_compute(types, m, probes) for m in models]
    return models, probes, types, naive


def test_fast_path_equals_naive_lm_lax_map_and_no_retrace(lm_setup):
    models, probe, types, naive = lm_setup
    fn = scalars.make_compute_fn(types, LM_CFG, probe, head_batching="map")
    for model, ref in zip(models, naive):
        assert_close(fn(eqx.filter(model, eqx.is_array)), ref, "lax.map")
    assert fn.trace_count == 1  # two checkpoints, one trace


@pytest.mark.slow
def test_fast_path_equals_naive_lm_block_of_checkpoints_vmap_heads(lm_setup):
    models, probe, types, naive = lm_setup
    fn = scalars.engine.make_block_compute_fn(types, LM_CFG, probe, head_batching="vmap")
    out = fn(scalars.engine.stack_params(models))
    for i, ref in enumerate(naive):
        assert_close({k: v[i] for k, v in out.items()}, ref, f"block checkpoint {i}")


@pytest.mark.slow
def test_fast_path_equals_naive_classifier_rope_block(cls_setup):
    models, probes, types, naive = cls_setup
    assert {"induction_strength", "icl_accuracy", "iwl_accuracy", "layer_removal_loss"} <= set(types)
    fn = scalars.engine.make_block_compute_fn(types, CLS_CFG, probes, head_batching="map")
    out = fn(scalars.engine.stack_params(models))
    for i, ref in enumerate(naive):
        assert_close({k: v[i] for k, v in out.items()}, ref, f"classifier checkpoint {i}")
    assert fn.trace_count == 1


@pytest.mark.slow
def test_every_type_has_known_dims_snake_name_and_declared_shape(lm_setup, cls_setup):
    outputs = {"lm": lm_setup[3][0], "classifier": cls_setup[3][0]}
    configs = {"lm": LM_CFG, "classifier": CLS_CFG}
    probes = {"lm": lm_setup[1], "classifier": cls_setup[1]}  # position dims are sized by the probe
    builtin = [t for t in scalars.list_types() if t.fn.__module__.startswith("scalars.") and t.probe != "default_pair"
               and not t.opt_in and t.requires != "regression"]  # regression, SGLD types: test_llc.py
    assert len(builtin) >= 25
    for dst in builtin:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", dst.name), dst.name
        assert set(dst.dims) <= set(dims.KNOWN_DIMS) - {dims.STEP, dims.RUN}, dst.name
        assert dst.description and isinstance(dst.version, int)
        heads = [dst.requires] if dst.requires else ["lm", "classifier"]
        for head in [h for h in heads if dst.name in outputs[h] or "neuron" not in dst.dims]:  # CLS_CFG: no MLP
            value = outputs[head][dst.name]
            probe = scalars.engine.select_probe(dst, configs[head], probes[head])
            assert value.shape == scalars.registry.type_shape(dst, configs[head], probe), (dst.name, head)
    coords = scalars.registry.type_coords("composition_k", LM_CFG)
    assert list(coords) == ["layer", "head", "src_layer", "src_head"]
    np.testing.assert_array_equal(coords["head"], np.arange(LM_CFG.n_heads))


def test_option_changes_are_validated_and_mean_ablation_option(lm_setup):
    models, probe, _, naive = lm_setup
    fn = scalars.make_compute_fn(["ablated_loss"], LM_CFG, probe, options={"ablated_loss": {"ablation": "mean"}})
    np.testing.assert_allclose(np.asarray(fn(eqx.filter(models[0], eqx.is_array))["ablated_loss"]),
                               naive[0]["ablated_loss_mean"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="type 'ablated_loss' has no option\\(s\\) ablaton; its options are: ablation"):
        scalars.make_compute_fn(["ablated_loss"], LM_CFG, probe, options={"ablated_loss": {"ablaton": "mean"}})


def test_per_position_mean_ablation_fast_equals_naive(lm_setup):
    models, probe, _, _ = lm_setup
    types = ["ablated_loss", "ablated_accuracy", "ablated_loss_pattern_preserving", "ablated_loss_value_preserving",
             "layer_removal_loss"]
    options = {t: {"ablation": "mean_per_position"} for t in types}
    fast = scalars.make_compute_fn(types, LM_CFG, probe, options=options)(eqx.filter(models[0], eqx.is_array))
    naive = scalars.reference.naive_compute(types, models[0], probe, options=options)
    assert_close(fast, naive, "mean_per_position")
    pooled = scalars.reference.naive_compute(["ablated_loss"], models[0], probe, options={"ablated_loss": {"ablation": "mean"}})
    assert not np.allclose(naive["ablated_loss"], pooled["ablated_loss"], atol=1e-4)


def test_type_probes_override_the_declared_probe(lm_setup):
    models, _, _, _ = lm_setup
    user = scalars.probes.from_tokens(np.random.default_rng(5).integers(0, 20, size=(3, 9)), name="user", vocab_size=20)
    fn = scalars.make_compute_fn(["loss", "composition_v"], LM_CFG, type_probes={"loss": user})
    assert fn.probe_for == {"loss": user, "composition_v": None}
    out = fn(eqx.filter(models[0], eqx.is_array))
    np.testing.assert_allclose(np.asarray(out["loss"]), scalars.reference.naive_compute(["loss"], models[0], user)["loss"],
                               rtol=1e-6)


def test_type_probe_and_head_mismatches_are_clear(lm_setup):
    _, probe, _, _ = lm_setup
    with pytest.raises(ValueError, match="type 'induction_strength' needs a sequence classifier"):
        scalars.make_compute_fn(["induction_strength"], LM_CFG, probe)
    with pytest.raises(ValueError, match="type 'icl_accuracy' reads probe 'icl', which was not given"):
        scalars.make_compute_fn(["icl_accuracy"], CLS_CFG, {"iwl": classifier_probe("iwl", 0)})
    with pytest.raises(ValueError, match="holds tokens inputs but the model is a sequence classifier"):
        scalars.make_compute_fn(["loss"], CLS_CFG, probe)
    with pytest.raises(ValueError, match="params do not have this model's structure"):
        scalars.make_compute_fn(["loss"], LM_CFG, probe)(eqx.filter(random_model(CLS_CFG, 0), eqx.is_array))


def test_registry_refuses_duplicates_and_bad_names():
    with pytest.raises(ValueError, match="'induction_score' is already registered"):
        scalars.register("induction_score", dims=("layer", "head"), description="x")(lambda *a: None)
    with pytest.raises(ValueError, match="must be snake_case"):
        scalars.register("InductionScore", dims=(), description="x")(lambda *a: None)
    with pytest.raises(ValueError, match="unknown dim 'feature'"):
        scalars.register("feature_score", dims=("layer", "feature"), description="x")(lambda *a: None)


def test_unknown_type_suggests_nearest_names():
    with pytest.raises(KeyError, match="unknown derived-scalar type 'induction_scor'; did you mean 'induction_score'"):
        scalars.get_type("induction_scor")
    with pytest.raises(KeyError, match="unknown derived-scalar type 'zzz'"):
        scalars.get_type("zzz")


def test_plugin_registers_a_type_that_the_engine_computes(tmp_path):
    plugin = tmp_path / "my_types.py"
    plugin.write_text(textwrap.dedent('''
        import jax.numpy as jnp
        from scalars import register

        @register("mean_resid_norm", dims=("layer",), description="mean norm of resid_post", units="norm")
        def mean_resid_norm(model, probe, clean, ctx):
            return jnp.stack([jnp.linalg.norm(o["resid_post"], axis=-1).mean() for o in clean["layer_outputs"]])
    '''))
    try:
        assert scalars.load_plugin(plugin) == ["mean_resid_norm"]
        assert scalars.load_plugin(plugin) == ["mean_resid_norm"]  # loading again is a no-op
        dst = scalars.get_type("mean_resid_norm")
        cfg = ModelConfig(n_layers=2, d_model=8, n_heads=2, vocab_size=10, n_ctx=8)
        probe = scalars.probes.repeated_tokens(batch=2, T=3, vocab_size=10)
        out = scalars.make_compute_fn([dst], cfg, probe)(eqx.filter(random_model(cfg, 0), eqx.is_array))
        assert out["mean_resid_norm"].shape == (2,)
    finally:
        scalars.registry.unregister("mean_resid_norm")


def test_plugin_errors_are_one_clear_sentence(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(textwrap.dedent('''
        from scalars import register

        @register("half_registered", dims=(), description="registered before the error")
        def half(model, probe, clean, ctx):
            return 0.0

        raise RuntimeError("missing weights file")
    '''))
    with pytest.raises(ValueError, match=r"plugin '.*broken.py' raised RuntimeError: missing weights file"):
        scalars.load_plugin(broken)
    with pytest.raises(KeyError):  # rolled back
        scalars.get_type("half_registered")
    with pytest.raises(ValueError, match="does not exist"):
        scalars.load_plugin(tmp_path / "nope.py")


def test_plugin_with_wrong_output_shape_is_reported(tmp_path):
    @scalars.register("wrong_shape_score", dims=("layer", "head"), description="returns the wrong shape")
    def wrong(model, probe, clean, ctx):
        return ctx.mean_patterns()[:, :, 0, 0].T

    try:
        cfg = ModelConfig(n_layers=2, d_model=12, n_heads=3, vocab_size=10, n_ctx=8)
        probe = scalars.probes.repeated_tokens(batch=2, T=3, vocab_size=10)
        fn = scalars.make_compute_fn(["wrong_shape_score"], cfg, probe)
        with pytest.raises(ValueError, match=r"type 'wrong_shape_score' returned shape \(3, 2\).*declare \(2, 3\)"):
            fn(eqx.filter(random_model(cfg, 0), eqx.is_array))
    finally:
        scalars.registry.unregister("wrong_shape_score")


def test_repeated_tokens_probe_layout_and_hash():
    p = scalars.probes.repeated_tokens(seed=3, batch=5, T=7, vocab_size=11)
    tokens = np.asarray(p.arrays["tokens"])
    assert tokens.shape == (5, 15) and tokens.dtype == np.int32
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] >= 1).all() and (tokens < 11).all()
    np.testing.assert_array_equal(tokens[:, 1:8], tokens[:, 8:])
    assert p.metadata["T"] == 7 and p.seq_len == 15 and p.kind == "tokens"
    again = scalars.probes.repeated_tokens(seed=3, batch=5, T=7, vocab_size=11)
    assert again.content_hash == p.content_hash and len(p.content_hash) == 64
    assert scalars.probes.repeated_tokens(seed=4, batch=5, T=7, vocab_size=11).content_hash != p.content_hash
    other_bos = scalars.probes.repeated_tokens(seed=3, batch=5, T=7, vocab_size=11, bos=4)
    assert (np.asarray(other_bos.arrays["tokens"])[:, 1:] != 4).all()


def test_token_probe_from_npy_errors(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.array([[0, 1, 2, 1, 2]]))
    p = scalars.probes.from_npy(good, T=2, vocab_size=3)
    assert p.name == "good" and p.metadata["T"] == 2
    cases = {
        "rank.npy": (np.zeros(5, np.int64), r"must have shape \(batch, seq\), got shape \(5,\)"),
        "float.npy": (np.zeros((2, 5)), "must hold integer token ids, got dtype float64"),
        "vocab.npy": (np.array([[0, 1, 7]]), r"token ids outside the vocabulary 0..2 \(e.g. 7\)"),
    }
    for fname, (arr, message) in cases.items():
        np.save(tmp_path / fname, arr)
        with pytest.raises(ValueError, match=message):
            scalars.probes.from_npy(tmp_path / fname, vocab_size=3)
    assert scalars.probes.from_npy(good).metadata["T"] == 2  # the repeated layout is detected
    with pytest.raises(ValueError, match="with T=3 must have 2T\\+1=7 positions"):
        scalars.probes.from_npy(good, T=3)
    np.save(tmp_path / "plain.npy", np.array([[0, 1, 2, 2, 1]]))
    assert "T" not in scalars.probes.from_npy(tmp_path / "plain.npy").metadata
    with pytest.raises(ValueError, match="positions 1..T and T\\+1..2T must hold the same tokens"):
        scalars.probes.from_npy(tmp_path / "plain.npy", T=2)
    with pytest.raises(ValueError, match="does not exist"):
        scalars.probes.from_npy(tmp_path / "missing.npy")


def test_repeat_types_need_a_repeat_length():
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, vocab_size=10, n_ctx=8)
    probe = scalars.probes.from_tokens(np.ones((2, 6), np.int32), name="plain")
    fn = scalars.make_compute_fn(["induction_score"], cfg, probe)
    with pytest.raises(ValueError, match="probe 'plain' has no repeat length T"):
        fn(eqx.filter(random_model(cfg, 0), eqx.is_array))


def tl_detect_head_reference(pattern, tokens, detection, exclude_bos, exclude_current_token):
    """TransformerLens `detect_head` (error_measure="mul") for one head, written out in numpy:
    per sequence, detection pattern from token equality, score = sum(p * det) / sum(p)."""
    scores = []
    for p, tok in zip(pattern, tokens):
        S = len(tok)
        dup = np.tril((tok[:, None] == tok[None, :]).astype(float))
        np.fill_diagonal(dup, 0)
        det = {"previous_token_head": np.eye(S, k=-1),
               "duplicate_token_head": dup,
               "induction_head": np.tril(np.concatenate([np.zeros((S, 1)), np.roll(dup, 1, axis=1)[:, 1:]], axis=1))}[
            detection]
        p = p.copy()
        if exclude_bos:
            p[:, 0] = 0
        if exclude_current_token:
            np.fill_diagonal(p, 0)
        scores.append((p * det).sum() / p.sum())
    return np.mean(scores)


@pytest.mark.parametrize("detection, exclude_bos, exclude_current", [
    ("induction_head", False, False), ("duplicate_token_head", True, True), ("previous_token_head", True, False)])
def test_head_detector_matches_transformer_lens_reference(lm_setup, detection, exclude_bos, exclude_current):
    models, probe, _, _ = lm_setup
    tokens = np.asarray(probe.arrays["tokens"])
    assert any(len(set(t[1:6])) < 5 for t in tokens)  # accidental repeats: detection follows tokens
    opts = {"detection": detection, "exclude_bos": exclude_bos, "exclude_current_token": exclude_current}
    fn = scalars.make_compute_fn(["head_detector_score"], LM_CFG, probe, options={"head_detector_score": opts})
    got = np.asarray(fn(eqx.filter(models[0], eqx.is_array))["head_detector_score"])
    clean = jax.vmap(models[0].call_with_all_aux)(jnp.asarray(tokens))
    for layer in range(LM_CFG.n_layers):
        pattern = np.asarray(clean["layer_outputs"][layer]["attn_output"]["pattern"], np.float64)
        for head in range(LM_CFG.n_heads):
            ref = tl_detect_head_reference(pattern[:, head], tokens, detection, exclude_bos, exclude_current)
            np.testing.assert_allclose(got[layer, head], ref, rtol=1e-5)


def test_entry_point_plugins_are_loaded(tmp_path, monkeypatch):
    import importlib.metadata

    (tmp_path / "ep_types_pkg.py").write_text(textwrap.dedent('''
        from scalars import register

        @register("entry_point_score", dims=(), description="registered through an entry point")
        def entry_point_score(model, probe, clean, ctx):
            return ctx.clean_metrics()[0]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="mine", value="ep_types_pkg", group=scalars.registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == ep.group else [])
    try:
        assert scalars.registry.load_entry_point_plugins() == ["entry_point_score"]
        assert scalars.registry.load_entry_point_plugins() == []  # already loaded
        assert scalars.get_type("entry_point_score").dims == ()
    finally:
        scalars.registry.unregister("entry_point_score")
