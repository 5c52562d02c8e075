"""Model families beyond GPT-2 (GPT-NeoX / Pythia, Llama): the forward against transformers' own saved
outputs, the importer's layout and refusals, and the engine against the naive reference on them.

The fixtures in tests/fixtures/hf/ were written by transformers itself (make_hf_fixtures.py, run
with a torch + transformers environment); these tests need neither.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import equinox as eqx
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from scalars.interventions import _fast_ablation as fa
from scalars.interventions import _ablation as iv
from trainer.interop._files import read_checkpoint_dir
from trainer.interop.hf.families import FAMILIES, family_for_hf, model_config_from_hf
from trainer.interop.hf.importer import import_hf
from trainer.model import ModelConfig, build_model, load_named_leaves, named_leaves, next_token_losses
from tests._paths import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "hf"
NAMES = ["gpt2", "gpt2_crfm", "gpt_neox_parallel_rot025", "gpt_neox_sequential_rot100", "llama_gqa_tied",
         "llama_gqa_untied", "llama_gqa_bf16"]
TOL = {"rtol": 1e-5, "atol": 1e-5}
runner = CliRunner()


def _load(d: Path):
    """(family, ModelConfig, our model) of an HF checkpoint folder, through the importer's own mapping."""
    cfg = json.loads((d / "config.json").read_text())
    family = family_for_hf(cfg)
    config = family.config_from_hf(cfg, str(d))
    tensors = {family.strip(k): v for k, v in read_checkpoint_dir(d).items()}
    leaves = {k: np.asarray(v, np.float32) for k, v in family.from_hf(tensors, config).items()}
    return family, config, load_named_leaves(build_model(config), leaves)


# -- the forward against transformers ----------------------------------------------------------
@pytest.mark.parametrize("name", slow_except(NAMES, ["gpt2_crfm", "gpt_neox_parallel_rot025", "llama_gqa_untied"]))
def test_logits_patterns_and_loss_equal_transformers(name):
    family, config, model = _load(FIXTURES / name)
    ref = np.load(FIXTURES / name / "reference.npz")
    out = jax.vmap(model.call_with_all_aux)(jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(np.asarray(out["logits"]), ref["logits"], **TOL)
    patterns = np.stack([np.asarray(o["attn_output"]["pattern"]) for o in out["layer_outputs"]])
    np.testing.assert_allclose(patterns, ref["attentions"], **TOL)
    loss = jax.vmap(next_token_losses)(out["logits"], jnp.asarray(ref["tokens"])).mean()
    np.testing.assert_allclose(float(loss), float(ref["loss"]), **TOL)
    assert family.model_type == json.loads((FIXTURES / name / "config.json").read_text())["model_type"]


def test_fixture_configs_map_to_the_intended_options():
    cfgs = {n: _load(FIXTURES / n)[1] for n in NAMES}
    par, seq = cfgs["gpt_neox_parallel_rot025"], cfgs["gpt_neox_sequential_rot100"]
    assert (par.parallel_residual, par.rotary_pct, par.rotary_dim, par.rope_base) == (True, 0.25, 2, 1000.0)
    assert (seq.parallel_residual, seq.rotary_pct, seq.rope_layout, seq.activation) == (False, 1.0, "half", "gelu")
    assert not par.tied_unembed and par.ln_eps == 1e-4 and par.qkv_bias and par.mlp_bias
    tied, untied = cfgs["llama_gqa_tied"], cfgs["llama_gqa_untied"]
    assert (tied.norm, tied.activation, tied.n_kv_heads, tied.kv_heads, tied.rope_base) == ("rmsnorm", "swiglu", 2, 2, 500.0)
    assert tied.tied_unembed and not untied.tied_unembed and not (tied.qkv_bias or tied.out_bias or tied.mlp_bias)
    _, _, model = _load(FIXTURES / "llama_gqa_tied")
    assert model.blocks[0].attn.W_K.shape == (2, 32, 8) and model.W_U is None
    crfm = cfgs["gpt2_crfm"]
    assert crfm.scale_attn_by_inverse_layer_idx and not cfgs["gpt2"].scale_attn_by_inverse_layer_idx
    _, _, model = _load(FIXTURES / "gpt2_crfm")
    assert [b.attn.score_divisor for b in model.blocks] == [1.0, 2.0, 3.0]


def test_the_crfm_scaling_is_what_matches_transformers():
    """Without the inverse-layer scaling the same weights miss the reference (layers 1 and 2 differ)."""
    import dataclasses

    family, config, model = _load(FIXTURES / "gpt2_crfm")
    plain = load_named_leaves(build_model(dataclasses.replace(config, scale_attn_by_inverse_layer_idx=False)),
                              named_leaves(model))
    ref = np.load(FIXTURES / "gpt2_crfm" / "reference.npz")
    out = jax.vmap(plain.call_with_all_aux)(jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(np.asarray(out["layer_outputs"][0]["attn_output"]["pattern"]), ref["attentions"][0],
                               **TOL)  # block 0 divides by 1
    assert np.abs(np.asarray(out["layer_outputs"][1]["attn_output"]["pattern"]) - ref["attentions"][1]).max() > 1e-2
    assert np.abs(np.asarray(out["logits"]) - ref["logits"]).max() > 1e-2


def test_pythia_style_config_keys_give_the_same_model(tmp_path):
    """Real Pythia config.json files predate rope_parameters: rotary_pct, rotary_emb_base, rope_scaling null."""
    cfg = json.loads((FIXTURES / "gpt_neox_parallel_rot025" / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    old = {**cfg, "rotary_pct": rope["partial_rotary_factor"], "rotary_emb_base": rope["rope_theta"],
           "rope_scaling": None, "use_cache": True}
    assert model_config_from_hf(old) == model_config_from_hf({**cfg, "rope_parameters": rope})


@pytest.mark.parametrize("name", ["gpt_neox_parallel_rot025", "llama_gqa_tied", "llama_gqa_untied", "gpt2", "gpt2_crfm"])
def test_hf_to_ours_to_hf_is_bit_identical(name):
    family, config, _ = _load(FIXTURES / name)
    tensors = {family.strip(k): v for k, v in load_file(FIXTURES / name / "model.safetensors").items()}
    back = family.to_hf(family.from_hf(tensors, config), config)
    assert back.keys() == family.tensor_shapes(config).keys() == tensors.keys()
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    hf_cfg = family.hf_config(config)
    assert model_config_from_hf({**hf_cfg, "initializer_range": config.init_std}) == config


# -- refusals -----------------------------------------------------------------------------------
REFUSED = {
    "llama_rope_scaling": ("llama_gqa_tied", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    "llama_rope_type": ("llama_gqa_tied", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "rope_type"),
    "llama_attention_bias": ("llama_gqa_tied", {"attention_bias": True}, "attention_bias=True"),
    "llama_mlp_bias": ("llama_gqa_tied", {"mlp_bias": True}, "mlp_bias=True"),
    "llama_gelu": ("llama_gqa_tied", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    "llama_sliding_window": ("llama_gqa_tied", {"sliding_window": 4}, "sliding_window=4"),
    "llama_head_dim": ("llama_gqa_tied", {"head_dim": 16}, "head_dim=16"),
    "neox_gelu_fast": ("gpt_neox_parallel_rot025", {"hidden_act": "gelu_fast"}, "hidden_act='gelu_fast'"),
    "neox_rope_scaling": ("gpt_neox_parallel_rot025", {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
                          "rope_scaling"),
    "unknown_type": ("llama_gqa_tied", {"model_type": "mistral"}, "'mistral' model, which cannot be imported"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unimplemented_options_are_refused_by_name_and_nothing_is_written(case, tmp_path):
    name, edit, phrase = REFUSED[case]
    d = tmp_path / "series" / "step100"
    shutil.copytree(FIXTURES / name, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ValueError, match=phrase) as info:
        import_hf([d], tmp_path / "run")
    assert str(info.value).count(". ") == 0 and "\n" not in str(info.value)  # one sentence
    assert not (tmp_path / "run").exists()


def _series(tmp_path: Path, name: str, steps=(0, 10, 20), scale: float = 0.05) -> Path:
    """A folder of checkpoint folders step{S}/ copied from one fixture, weights perturbed per step."""
    folder = tmp_path / f"{name}_series"
    tensors = load_file(FIXTURES / name / "model.safetensors")
    for i, s in enumerate(steps):
        d = folder / f"step{s}"
        d.mkdir(parents=True)
        shutil.copy(FIXTURES / name / "config.json", d / "config.json")
        rng = np.random.default_rng(i)
        save_file({k: (v + scale * i * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tensors.items()},
                  d / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_bad_series_are_one_sentence_and_write_nothing(tmp_path, monkeypatch):
    import trainer.interop._files

    monkeypatch.setattr(trainer.interop._files, "_torch", lambda: None)  # as without the [bench] extra
    out = tmp_path / "run"
    mixed = _series(tmp_path, "gpt_neox_parallel_rot025", steps=(0,))
    shutil.copytree(FIXTURES / "llama_gqa_untied", mixed / "step5")
    with pytest.raises(ValueError, match=r"is a llama checkpoint but '.*step0' is gpt_neox; a series mixes"):
        import_hf([mixed], out)
    assert not out.exists()
    pickled = tmp_path / "checkpoint-3"
    shutil.copytree(FIXTURES / "llama_gqa_tied", pickled)
    os.remove(pickled / "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match=r"has only pytorch_model.bin \(a pickle.*convert it to safetensors"):
        import_hf([pickled], out)
    cut = tmp_path / "checkpoint-4"
    shutil.copytree(FIXTURES / "gpt_neox_sequential_rot100", cut)
    size = os.path.getsize(cut / "model.safetensors")
    with open(cut / "model.safetensors", "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ValueError, match=rf"model.safetensors' is truncated: its header describes {size} bytes but the "
                                         rf"file has {size - 100}; copy the checkpoint again"):
        import_hf([cut], out)
    assert not out.exists() and [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_float16_weights_load_as_stored_and_compute_in_float32(tmp_path):
    d = tmp_path / "step7"
    shutil.copytree(FIXTURES / "gpt_neox_parallel_rot025", d)
    tensors = load_file(d / "model.safetensors")
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, d / "model.safetensors", metadata={"format": "pt"})
    run = import_hf([d], tmp_path / "run")
    family, config, _ = _load(FIXTURES / "gpt_neox_parallel_rot025")
    want = family.from_hf({family.strip(k): v.astype(np.float16).astype(np.float32) for k, v in tensors.items()}, config)
    got = store.open_archive(run).load(7)
    assert all(got[k].dtype == np.float32 and np.array_equal(got[k], want[k]) for k in want)
    # bfloat16 (numpy has none): the fixture's stored bf16 weights widen exactly
    bf16 = read_checkpoint_dir(FIXTURES / "llama_gqa_bf16")
    assert all(v.dtype == np.float32 for v in bf16.values())
    assert all(np.array_equal(v.view(np.uint32) & 0xFFFF, np.zeros(v.shape, np.uint32)) for v in bf16.values())


# -- the engine on these families -----------------------------------------------------------------
SERIES_TYPES = ["induction_score", "ablated_loss", "prev_token_score", "direct_logit_attribution", "logit_lens_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt_neox_parallel_rot025", "llama_gqa_untied"])
def test_cli_import_of_a_series_folder_then_compute_equals_naive(name, tmp_path):
    folder = _series(tmp_path, name)
    run = tmp_path / "run"
    r = runner.invoke(app, ["import", "--from", "hf", str(folder), "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "imported 3 checkpoint directories" in r.output
    info = store.read_run_json(run)
    assert info["steps"] == [0, 10, 20] and info["hf_model_type"] == FIXTURES.joinpath(name, "config.json").read_text(
    ).split('"model_type": "')[1].split('"')[0]
    args = ["compute", str(run), "-q"] + [a for t in SERIES_TYPES for a in ("--type", t)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    ds = store.open_scalars(run)
    config = ModelConfig.from_dict(info["model"])
    probe = scalars.engine.build_run_probe("repeated_tokens", run, info, config)
    template = build_model(config)
    for i, step in enumerate([0, 10, 20]):
        model = load_named_leaves(template, store.open_archive(run).load(step))
        naive = scalars.reference.naive_compute(SERIES_TYPES, model, probe)
        for t in SERIES_TYPES:
            np.testing.assert_allclose(ds[t].values[i], naive[t], **TOL, err_msg=f"{t} at step {step}")
    assert np.isfinite(ds["induction_score"].values).all() and ds["ablated_loss"].shape == (3, 2, 4)


FAMILY_CONFIGS = {
    "neox_parallel_partial": ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=20, n_ctx=16, positional="rope",
                                         rope_layout="half", rotary_pct=0.25, parallel_residual=True, activation="gelu"),
    "neox_sequential_full": ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=20, n_ctx=16, positional="rope",
                                        rope_layout="half", parallel_residual=False, activation="gelu"),
    "llama_gqa": ModelConfig(n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, vocab_size=20, n_ctx=16, positional="rope",
                             rope_layout="half", norm="rmsnorm", activation="swiglu", d_mlp=24, qkv_bias=False,
                             out_bias=False, mlp_bias=False, tied_unembed=True),
    "gpt2_crfm": ModelConfig(n_layers=3, d_model=16, n_heads=2, vocab_size=20, n_ctx=16,
                             scale_attn_by_inverse_layer_idx=True),
}


def _random_model(config: ModelConfig, seed: int, scale: float = 0.3):
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(build_model, config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shaped)


def _lm_types() -> list[str]:  # patching types: their own fast == naive tests; SGLD types are opt-in
    return [t.name for t in scalars.list_types()
            if t.requires in (None, "lm") and t.probe != "default_pair" and not t.opt_in]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_every_builtin_type_fast_path_equals_naive(family):
    config = FAMILY_CONFIGS[family]
    assert fa.unsupported(config) is None
    probe = scalars.probes.repeated_tokens(seed=0, batch=3, T=4, vocab_size=config.vocab_size)
    types = _lm_types()
    fn = scalars.engine.make_block_compute_fn(types, config, probe, head_batching="map")
    models = [_random_model(config, s) for s in (1, 2)]
    out = fn(scalars.engine.stack_params(models))
    for i, model in enumerate(models):
        ref = scalars.reference.naive_compute(types, model, probe)
        for name, value in ref.items():
            np.testing.assert_allclose(np.asarray(out[name][i]), value, **TOL, err_msg=f"{family}: {name}")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_fast_head_ablation_equals_the_cache_rerun(family):
    config = FAMILY_CONFIGS[family]
    model = _random_model(config, 3)
    probe = scalars.probes.repeated_tokens(seed=1, batch=3, T=4, vocab_size=config.vocab_size)
    clean = jax.vmap(model.call_with_all_aux)(probe.inputs)
    for ablation in ("zero", "mean"):
        fast = fa.head_ablation_metrics(model, probe, clean, ablation=ablation)
        slow = iv.head_ablation_metrics(model, probe, clean, ablation=ablation)
        for a, b in zip(fast, slow):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


def test_engine_takes_the_cache_rerun_for_an_option_the_fast_path_lacks(monkeypatch):
    config = FAMILY_CONFIGS["neox_parallel_partial"]
    from trainer.model import _batched

    monkeypatch.setitem(_batched.SUPPORTED, "parallel_residual", {False})
    assert fa.unsupported(config) == "parallel_residual=True"

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path ran for a config it does not support")

    monkeypatch.setattr(fa, "head_ablation_metrics", refuse)
    model = _random_model(config, 4)
    probe = scalars.probes.repeated_tokens(seed=2, batch=2, T=4, vocab_size=config.vocab_size)
    out = scalars.make_compute_fn(["ablated_loss"], config, probe)(eqx.filter(model, eqx.is_array))
    np.testing.assert_allclose(np.asarray(out["ablated_loss"]),
                               scalars.reference.naive_compute(["ablated_loss"], model, probe)["ablated_loss"], **TOL)


def test_grouped_query_heads_share_keys_but_are_intervened_on_per_query_head():
    config = FAMILY_CONFIGS["llama_gqa"]
    model = _random_model(config, 5)
    tokens = jnp.arange(6) % config.vocab_size
    out = model.call_with_all_aux(tokens)
    k = out["layer_outputs"][0]["attn_output"]["k"]  # (H, T, e): one per query head
    assert k.shape == (4, 6, 4) and np.array_equal(k[0], k[1]) and np.array_equal(k[2], k[3])
    zero = {"layer_outputs": {0: {"attn_output": {"k": jnp.zeros_like(k)}}}}
    mask = {"layer_outputs": {0: {"attn_output": {"k": (jnp.arange(4) == 1)[:, None, None]}}}}
    edited = model.call_with_all_aux(tokens, cache=zero, cache_mask=mask)["layer_outputs"][0]["attn_output"]["pattern"]
    clean = out["layer_outputs"][0]["attn_output"]["pattern"]
    assert np.array_equal(edited[0], clean[0]) and not np.allclose(edited[1], clean[1])
    assert FAMILIES["llama"].tensor_shapes(config)["layers.0.self_attn.k_proj.weight"] == (8, 16)


def test_new_options_are_validated_with_one_sentence():
    with pytest.raises(ValueError, match=r"n_kv_heads must be a positive divisor of model.n_heads \(4\)"):
        ModelConfig(n_heads=4, d_model=16, n_kv_heads=3)
    with pytest.raises(ValueError, match=r"int\(d_head \* rotary_pct\) = 1"):
        ModelConfig(n_heads=4, d_model=16, positional="rope", rotary_pct=0.25)
    with pytest.raises(ValueError, match=r"unknown model.norm 'batchnorm'"):
        ModelConfig(norm="batchnorm")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_patching_types_fast_path_equals_naive(family):
    from scalars.reference._patching import NAIVE_TYPES, NaivePatcher

    config = FAMILY_CONFIGS[family]
    pair = scalars.probes.induction_pair(seed=1, batch=3, T=4, vocab_size=config.vocab_size)
    model = _random_model(config, 6)
    fn = scalars.make_compute_fn(NAIVE_TYPES, config, pair, options={t: {"normalize": False} for t in NAIVE_TYPES})
    fast, patcher = fn(eqx.filter(model, eqx.is_array)), NaivePatcher(model, pair)
    for name in NAIVE_TYPES:
        ref = scalars.reference.naive_patching(name, model, pair, normalize=False, patcher=patcher)
        np.testing.assert_allclose(np.asarray(fast[name]), ref, **TOL, equal_nan=True, err_msg=f"{family}: {name}")


@pytest.mark.parametrize("name", ["gpt_neox_sequential_rot100", "llama_gqa_tied", "llama_gqa_untied"])
def test_export_of_an_imported_series_gives_back_the_same_files(name, tmp_path):
    folder = _series(tmp_path, name, steps=(0, 10))
    run = import_hf([folder], tmp_path / "run")
    r = runner.invoke(app, ["export", str(run), "--step", "10", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    original, again = load_file(folder / "step10" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert original.keys() == again.keys() and all(np.array_equal(original[k], again[k]) for k in original)
    back = json.loads((tmp_path / "out" / "config.json").read_text())
    assert model_config_from_hf(back) == ModelConfig.from_dict(store.read_run_json(run)["model"])
    assert back["model_type"] == json.loads((folder / "step10" / "config.json").read_text())["model_type"]


def test_export_refuses_an_architecture_no_family_expresses(tmp_path):
    from trainer.interop.hf.families import family_for_config

    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=10, positional="rope", norm="rmsnorm",
                      activation="gelu")
    with pytest.raises(ValueError, match=r"cannot be written as a Hugging Face checkpoint \(not GPT-2, as .*rotary.*; "
                                         r"not GPT-NeoX, as its norm is rmsnorm.*; not Llama, as .*activation is gelu"):
        family_for_config(cfg)
    assert family_for_config(FAMILY_CONFIGS["llama_gqa"]).model_type == "llama"
    assert family_for_config(FAMILY_CONFIGS["neox_parallel_partial"]).model_type == "gpt_neox"


def test_vocabulary_sized_work_is_not_batched_over_checkpoints_or_heads_at_a_50k_vocabulary():
    """At Pythia-70m's shapes (8 heads, vocab 50304, 16 x 129 tokens) a block of checkpoints and a layer's
    head re-runs go one at a time (lax.map) instead of holding every (tokens, vocab) logit array at once;
    small vocabularies keep vmap. The mapped block computes what the vmapped one does."""
    from scalars.engine import _program as _compute

    pythia = ModelConfig(n_layers=6, d_model=512, n_heads=8, vocab_size=50304, n_ctx=2048, positional="rope",
                         rope_layout="half", rotary_pct=0.25, parallel_residual=True, activation="gelu")
    tokens = 16 * 129
    assert _compute.head_batching_for(pythia, tokens, "auto") == "map"  # on CPU anyway; on accelerators by size
    assert _compute.head_batching_for(pythia, tokens, "vmap") == "vmap"  # asked for: kept
    assert _compute.checkpoint_batching(pythia, tokens, 16, "map") == "map"
    small = dataclasses.replace(pythia, vocab_size=512)
    assert _compute.checkpoint_batching(small, tokens, 16, "vmap") == "vmap"
    config = FAMILY_CONFIGS["neox_parallel_partial"]
    probe = scalars.probes.repeated_tokens(seed=0, batch=3, T=4, vocab_size=config.vocab_size)
    stacked = scalars.engine.stack_params([_random_model(config, s) for s in (1, 2, 3)])
    types = ["induction_score", "ablated_loss", "logit_lens_loss"]
    vmapped = scalars.engine.make_block_compute_fn(types, config, probe, head_batching="map", checkpoint_batching="vmap")(stacked)
    mapped = scalars.engine.make_block_compute_fn(types, config, probe, head_batching="map",
                                                  checkpoint_batching="map")(stacked)
    for t in types:
        np.testing.assert_allclose(np.asarray(mapped[t]), np.asarray(vmapped[t]), rtol=1e-6, atol=1e-6)
