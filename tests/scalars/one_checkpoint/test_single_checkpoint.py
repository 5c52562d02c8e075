"""The single-checkpoint path: load_model, run_with_cache names against a hand-written numpy forward,
the ablation and patching helpers against weight edits and that forward, and `scalars open`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from scalars.one_checkpoint import ablate_head, ablate_neuron, patch_head, patch_resid
from scalars import load_model, run_with_cache
from scalars.one_checkpoint import CheckpointModel, session_namespace
from trainer.model import ModelConfig, build_model, load_named_leaves
from tests._paths import FIXTURES, ROOT

MLP_CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=24, n_ctx=16, vocab_size=20)


def planted(config: ModelConfig, seed: int = 0) -> CheckpointModel:
    """A model whose every weight (LN scales and biases too) is random, so no term vanishes."""
    model = build_model(config, seed=seed)
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_array))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return CheckpointModel(eqx.combine(jax.tree_util.tree_unflatten(treedef, noisy), model))


def tokens_pair(seed: int = 0, batch: int = 3, T: int = 9, vocab: int = 20):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (batch, T)).astype(np.int32), rng.integers(0, vocab, (batch, T)).astype(np.int32)


# ------------------------------------------------------------------ a hand-written float64 forward


def _gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def numpy_forward(model: CheckpointModel, tokens, edit=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and every activation by TransformerLens name, in TransformerLens layout, from the
    weights alone; `edit(name, value)` may replace any activation as it is made."""
    tf = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.model)
    cfg = model.config
    acts: dict[str, np.ndarray] = {}

    def hook(name, value):
        value = value if edit is None else edit(name, value)
        acts[name] = value
        return value

    def ln(x, p, name):
        c = x - x.mean(-1, keepdims=True)
        scale = hook(f"{name}.hook_scale", np.sqrt((c**2).mean(-1, keepdims=True) + cfg.ln_eps))
        return hook(f"{name}.hook_normalized", c / scale * p.w + p.b)

    B, T = tokens.shape
    x = hook("hook_embed", tf.embed.W_E[tokens]) + hook("hook_pos_embed", np.broadcast_to(tf.embed.W_pos[:T],
                                                                                          (B, T, cfg.d_model)))
    causal = np.tril(np.ones((T, T), bool))
    for l, blk in enumerate(tf.blocks):
        a, pre = blk.attn, f"blocks.{l}"
        x = hook(f"{pre}.hook_resid_pre", x)
        h = ln(x, blk.ln1, f"{pre}.ln1")
        q, k, v = (hook(f"{pre}.attn.hook_{n}", np.einsum("bpd,hde->bphe", h, W) + b)
                   for n, W, b in (("q", a.W_Q, a.b_Q), ("k", a.W_K, a.b_K), ("v", a.W_V, a.b_V)))
        scores = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        scores = hook(f"{pre}.attn.hook_attn_scores", np.where(causal, scores, -1e30))
        e = np.exp(scores - scores.max(-1, keepdims=True))
        pattern = hook(f"{pre}.attn.hook_pattern", e / e.sum(-1, keepdims=True))
        z = hook(f"{pre}.attn.hook_z", np.einsum("bhqk,bkhe->bqhe", pattern, v))
        result = hook(f"{pre}.attn.hook_result", np.einsum("bqhe,hed->bqhd", z, a.W_O))
        x = hook(f"{pre}.hook_resid_mid", x + hook(f"{pre}.hook_attn_out", result.sum(2) + a.b_O))
        if blk.mlp is not None:
            h = ln(x, blk.ln2, f"{pre}.ln2")
            post = hook(f"{pre}.mlp.hook_post", _gelu_new(hook(f"{pre}.mlp.hook_pre", h @ blk.mlp.W_in + blk.mlp.b_in)))
            x = x + hook(f"{pre}.hook_mlp_out", post @ blk.mlp.W_out + blk.mlp.b_out)
        x = hook(f"{pre}.hook_resid_post", x)
    logits = ln(x, tf.ln_final, "ln_final") @ tf.W_U
    return logits, acts


def close(a, b, tol=2e-4):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------ the cache


def test_cache_names_and_layouts_equal_a_numpy_forward():
    model = planted(MLP_CFG)
    tokens, _ = tokens_pair()
    logits, cache = run_with_cache(model, tokens)
    ref_logits, ref = numpy_forward(model, tokens)
    close(logits, ref_logits)
    assert list(cache) == list(ref)  # same names, in TransformerLens order (block by block)
    for name in ref:
        assert cache[name].shape == ref[name].shape, name
        close(cache[name], ref[name])
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 2, 9, 9)  # (batch, head, query, key)
    assert cache["blocks.0.attn.hook_z"].shape == (3, 9, 2, 8)  # (batch, pos, head, d_head)
    assert cache.path("blocks.1.attn.hook_pattern") == "layer_outputs.1.attn_output.pattern"
    np.testing.assert_array_equal(cache.tree["layer_outputs"][1]["attn_output"]["pattern"],
                                  cache["blocks.1.attn.hook_pattern"])


def test_cache_agrees_with_the_models_own_computation():
    model = planted(MLP_CFG, seed=3)
    tokens, _ = tokens_pair(1)
    logits, cache = run_with_cache(model, tokens)
    for layer in range(2):  # the pattern recomputed from hook_q and hook_k
        q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(MLP_CFG.d_head)
        scores = jnp.where(jnp.tril(jnp.ones((9, 9), bool)), scores, -jnp.inf)
        close(jax.nn.softmax(scores, -1), cache[f"blocks.{layer}.attn.hook_pattern"])
        z = jnp.einsum("bhqk,bkhe->bqhe", cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_v"])
        close(z, cache[f"blocks.{layer}.attn.hook_z"])
    tf = model.model  # the last resid_post through ln_final and the unembedding is the logits
    final = jax.vmap(lambda r: tf.unembed(r, {}))(cache["blocks.1.hook_resid_post"])
    close(final, logits, 1e-5)
    close(cache["ln_final.hook_normalized"] @ tf.W_U, logits, 1e-5)
    close(model(tokens), logits, 1e-5)


def test_cache_names_exist_only_for_the_architecture():
    tokens, _ = tokens_pair()
    attn_only = run_with_cache(planted(ModelConfig(n_layers=2, d_model=16, n_heads=2, n_ctx=16, vocab_size=20,
                                                   attn_only=True, positional="none", layernorm=False)), tokens)[1]
    assert not [n for n in attn_only if "mlp" in n or "ln2" in n or "hook_scale" in n or n == "hook_pos_embed"]
    assert "blocks.1.attn.hook_pattern" in attn_only and "blocks.2.hook_resid_pre" not in attn_only
    gated = run_with_cache(planted(ModelConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16, vocab_size=20,
                                               activation="swiglu")), tokens)[1]
    assert "blocks.0.mlp.hook_pre_linear" in gated
    assert "blocks.0.mlp.hook_pre_linear" not in run_with_cache(planted(MLP_CFG), tokens)[1]
    with pytest.raises(KeyError, match="nearest: blocks.1.attn.hook_pattern"):
        attn_only["blocks.1.attn.hook_patern"]
    with pytest.raises(KeyError, match="no activation named 'blocks.0.mlp.hook_post'"):
        attn_only["blocks.0.mlp.hook_post"]


@pytest.mark.slow
def test_model_and_cache_are_jit_friendly_pytrees():
    model = planted(MLP_CFG)
    tokens, _ = tokens_pair()
    logits, cache = jax.jit(run_with_cache)(model, tokens)
    close(logits, model(tokens), 1e-5)
    assert isinstance(cache, scalars.one_checkpoint.ActivationCache) and "blocks.0.hook_mlp_out" in cache
    grads = eqx.filter_grad(lambda m: m(tokens).sum())(model)
    assert grads.model.blocks[0].attn.W_Q.shape == (2, 16, 8)
    per_example = model.call_with_all_aux(tokens[0])
    close(per_example["logits"], logits[0], 1e-5)


# ----------------------------------------------------------------------------- interventions


def _with(model: CheckpointModel, where, value) -> CheckpointModel:
    return eqx.tree_at(lambda m: where(m.model), model, value)


def test_ablate_head_equals_editing_w_o():
    model = planted(MLP_CFG)
    tokens, _ = tokens_pair()
    W_O = model.model.blocks[1].attn.W_O
    zeroed = _with(model, lambda m: m.blocks[1].attn.W_O, W_O.at[0].set(0.0))
    got = ablate_head(model, tokens, 1, 0)
    close(got, zeroed(tokens))
    assert not np.allclose(got, model(tokens), atol=1e-3)
    # mean ablation: the head writes its mean z (over batch and positions) through W_O, a constant bias
    mean_z = numpy_forward(model, tokens)[1]["blocks.1.attn.hook_z"][:, :, 0].mean((0, 1))
    b_O = model.model.blocks[1].attn.b_O + jnp.asarray(mean_z, jnp.float32) @ W_O[0]
    meaned = _with(zeroed, lambda m: m.blocks[1].attn.b_O, b_O)
    close(ablate_head(model, tokens, 1, 0, kind="mean"), meaned(tokens))
    logits, cache = ablate_head(model, tokens, 0, -1, return_cache=True)
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_z"][:, :, 1], 0.0)
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre"], run_with_cache(model, tokens)[1]["blocks.0.hook_resid_pre"])
    close(logits, _with(model, lambda m: m.blocks[0].attn.W_O, model.model.blocks[0].attn.W_O.at[1].set(0.0))(tokens))


def test_ablate_neuron_equals_editing_w_out():
    model = planted(MLP_CFG)
    tokens, _ = tokens_pair()
    W_out = model.model.blocks[0].mlp.W_out
    zeroed = _with(model, lambda m: m.blocks[0].mlp.W_out, W_out.at[5].set(0.0))
    got = ablate_neuron(model, tokens, 0, 5)
    close(got, zeroed(tokens))
    assert not np.allclose(got, model(tokens), atol=1e-3)
    mean_post = numpy_forward(model, tokens)[1]["blocks.0.mlp.hook_post"][..., 5].mean()
    meaned = _with(zeroed, lambda m: m.blocks[0].mlp.b_out, model.model.blocks[0].mlp.b_out + float(mean_post) * W_out[5])
    close(ablate_neuron(model, tokens, 0, 5, kind="mean"), meaned(tokens))
    with pytest.raises(ValueError, match="attention-only"):
        ablate_neuron(planted(ModelConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16, vocab_size=20,
                                          attn_only=True)), tokens, 0, 0)


def test_per_position_mean_ablation_of_a_neuron_equals_the_numpy_forward():
    model = planted(MLP_CFG)
    tokens, _ = tokens_pair(2)
    per_position = numpy_forward(model, tokens)[1]["blocks.0.mlp.hook_post"][..., 5].mean(0)  # (T,)

    def edit(name, value):
        if name == "blocks.0.mlp.hook_post":
            value = value.copy()
            value[..., 5] = per_position[None, :]
        return value

    got = ablate_neuron(model, tokens, 0, 5, kind="mean_per_position")
    close(got, numpy_forward(model, tokens, edit)[0])
    assert not np.allclose(got, ablate_neuron(model, tokens, 0, 5, kind="mean"), atol=1e-4)


@pytest.mark.parametrize("position", [None, 4])
def test_patch_head_equals_the_numpy_forward_with_z_replaced(position):
    model = planted(MLP_CFG)
    clean, corrupt = tokens_pair(2)
    corrupt_z = numpy_forward(model, corrupt)[1]["blocks.1.attn.hook_z"]
    sites = np.s_[:, :, 1] if position is None else np.s_[:, position, 1]

    def edit(name, value):
        if name == "blocks.1.attn.hook_z":
            value = value.copy()
            value[sites] = corrupt_z[sites]
        return value

    got, cache = patch_head(model, clean, corrupt, 1, 1, position=position, return_cache=True)
    close(got, numpy_forward(model, clean, edit)[0])
    assert not np.allclose(got, model(clean), atol=1e-3)
    if position is not None:  # positions before the patched one see nothing of it (causal)
        close(got[:, :position], model(clean)[:, :position], 1e-5)
    close(cache["blocks.1.attn.hook_z"][sites], corrupt_z[sites])


def test_patch_resid_equals_the_numpy_forward_with_one_position_replaced():
    model = planted(MLP_CFG)
    clean, corrupt = tokens_pair(3)
    corrupt_resid = numpy_forward(model, corrupt)[1]["blocks.1.hook_resid_pre"]

    def edit(name, value):
        if name == "blocks.1.hook_resid_pre":
            value = value.copy()
            value[:, 6] = corrupt_resid[:, 6]
        return value

    got = patch_resid(model, clean, corrupt, 1, 6)
    close(got, numpy_forward(model, clean, edit)[0])
    close(got[:, :6], model(clean)[:, :6], 1e-5)
    assert not np.allclose(got[:, 6:], model(clean)[:, 6:], atol=1e-3)
    close(patch_resid(model, clean, corrupt, 1, -3), got)  # negative positions count from the end
    close(patch_resid(model, clean, clean, 0, 2), model(clean), 1e-5)


def test_intervention_inputs_are_checked_in_one_sentence():
    model = planted(MLP_CFG)
    clean, corrupt = tokens_pair()
    with pytest.raises(ValueError, match=r"head 2 is out of range: this model has 2 heads per layer \(0..1\)"):
        ablate_head(model, clean, 0, 2)
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        patch_resid(model, clean, corrupt, 5, 0)
    with pytest.raises(ValueError, match="position 9 is out of range: this model has 9 positions"):
        patch_head(model, clean, corrupt, 0, 0, position=9)
    with pytest.raises(ValueError, match="same shapes"):
        patch_head(model, clean, corrupt[:, :5], 0, 0)
    with pytest.raises(ValueError, match="kind must be one of zero, mean"):
        ablate_head(model, clean, 0, 0, kind="resample")


# --------------------------------------------------------------------------------- load_model


def test_load_model_at_a_step_and_at_last(tiny_run):
    reader = store.open_archive(tiny_run)
    steps = reader.steps.tolist()
    tokens = scalars.probes.repeated_tokens(batch=2, T=8, vocab_size=64).inputs
    config = ModelConfig.from_dict(store.read_run_json(tiny_run)["model"])
    for step, want in ((steps[2], steps[2]), ("last", steps[-1]), ("first", steps[0]), (str(steps[1]), steps[1])):
        model = load_model(tiny_run, step)
        ref = load_named_leaves(build_model(config), reader.load(want))
        close(model(tokens), jax.vmap(ref)(tokens), 1e-5)
        assert model(tokens).shape == (2, 17, 64)
    assert not np.allclose(load_model(tiny_run, steps[0])(tokens), load_model(tiny_run, "last")(tokens))


def test_load_model_errors_name_the_nearest_steps(tiny_run, tmp_path):
    with pytest.raises(ValueError, match=r"^step 35 is not a stored checkpoint of run '.*'; the nearest stored steps "
                                         r"are 30 and 40$"):
        load_model(tiny_run, 35)
    with pytest.raises(ValueError, match="the nearest stored step is 60$"):
        load_model(tiny_run, 1000)
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        load_model(tmp_path, "last")
    with pytest.raises(ValueError, match="is not a step number"):
        load_model(tiny_run, "latest")


@pytest.mark.slow
def test_load_model_on_an_imported_icl_dynamics_run(tmp_path):
    from trainer.interop.icl_dynamics import import_icl_dynamics

    folder = FIXTURES / "icl-dynamics" / "omniglot50_rl5_synthetic_mlp"
    (run,) = import_icl_dynamics([folder], tmp_path / "imported", data="synthetic")
    info = store.read_run_json(run)
    config = ModelConfig.from_dict(info["model"])
    probe = scalars.engine.build_run_probe("default:stride=16", run, info, config)
    model = load_model(run, "last")
    logits, cache = run_with_cache(model, probe.inputs)
    assert logits.shape == (probe.batch_size, probe.seq_len, config.n_labels)
    ref = load_named_leaves(build_model(config), store.open_archive(run).load(info["steps"][-1]))
    close(logits, jax.vmap(ref)(probe.inputs), 1e-5)
    assert "blocks.0.mlp.hook_post" in cache and cache["blocks.1.attn.hook_pattern"].shape[-1] == probe.seq_len


@pytest.mark.slow
def test_load_model_on_a_regression_run(memorizing_regression_run):
    info = store.read_run_json(memorizing_regression_run)
    config = ModelConfig.from_dict(info["model"])
    probe = scalars.engine.build_run_probe("default", memorizing_regression_run, info, config)
    model = load_model(memorizing_regression_run, "last")
    assert model.cfg is model.config and model.cfg.head == "regression"
    logits, cache = run_with_cache(model, probe.inputs)  # {"xs": (B, K, D), "ys": (B, K)}
    assert logits.shape == (probe.batch_size, probe.seq_len, 1)
    reader = store.open_archive(memorizing_regression_run)
    ref = load_named_leaves(build_model(config), reader.load(int(reader.steps[-1])))
    close(logits, jax.vmap(ref)(probe.inputs), 1e-5)
    assert "hook_embed" in cache and "blocks.0.mlp.hook_post" in cache


# -------------------------------------------------------------------------------- scalars open


def test_session_namespace_holds_the_checkpoint_and_the_default_probe(tiny_run):
    ns = session_namespace(tiny_run, "last")
    assert ns["step"] == int(store.open_archive(tiny_run).steps[-1]) and ns["run"] == Path(tiny_run)
    assert ns["probe"].name == "repeated_tokens"
    close(ns["logits"], ns["model"](ns["probe"].inputs), 1e-5)
    assert ns["cache"]["blocks.1.attn.hook_pattern"].shape[0] == ns["probe"].batch_size
    text = scalars.one_checkpoint.banner(ns)
    for name in ("model", "cache", "probe", "run_with_cache", "ablate_head", "patch_head", "step", "run"):
        assert f"\n  {name} " in text


def test_open_print_namespace_and_bad_input(tiny_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["open", str(tiny_run), "--step", "30", "--print-namespace"])
    assert r.exit_code == 0, r.output
    assert f"{tiny_run} at step 30" in r.output and "ablate_head" in r.output
    r = runner.invoke(app, ["open", str(tiny_run), "--step", "35", "--print-namespace"])
    assert r.exit_code == 2 and "nearest stored steps are 30 and 40" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["open", str(tmp_path), "--print-namespace"])
    assert r.exit_code == 2 and "is not a run directory" in r.output


def test_open_without_ipython_says_how_to_install_it(tiny_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", None)  # import IPython now fails
    r = CliRunner().invoke(app, ["open", str(tiny_run)])
    assert r.exit_code == 2 and "pip install ipython" in r.output and "Traceback" not in r.output


def test_open_starts_ipython_reading_piped_commands(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IPYTHONDIR": str(tmp_path / "ipython"), "COLUMNS": "200"}
    commands = "print(type(model).__name__, step)\nprint(cache['blocks.1.attn.hook_pattern'].shape)\n"
    r = subprocess.run([sys.executable, "-m", "cli.app", "open", str(tiny_run), "--step", "last"], input=commands,
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at step 60" in r.stdout and "run_with_cache" in r.stdout  # the banner
    info = store.read_run_json(tiny_run)
    probe = scalars.engine.build_run_probe("default", tiny_run, info, ModelConfig.from_dict(info["model"]))
    assert "CheckpointModel 60" in r.stdout and str((16, info["model"]["n_heads"], probe.seq_len, probe.seq_len)) in r.stdout
