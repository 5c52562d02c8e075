"""HF GPT-2 export/import: layout checked against an independent numpy GPT-2 forward, bit-identical round
trips (parameters and scalars), refusal of non-GPT-2 architectures and of broken checkpoint directories."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests._marks import slow_except
import typer
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from tests.conftest import TINY_OVERRIDES
from trainer.interop.hf.gpt2 import check_gpt2_compatible, export_hf
from trainer.interop.hf.importer import import_hf
from trainer.model import ModelConfig, build_model, load_named_leaves, named_leaves

runner = CliRunner()


def hf_gpt2_forward(t: dict, cfg: dict, tokens: np.ndarray) -> np.ndarray:
    """GPT2LMHeadModel's forward from the HF tensor layout alone (numpy float64, prefix optional)."""
    t = {k.removeprefix("transformer."): np.asarray(v, np.float64) for k, v in t.items()}
    H, eps = cfg["n_head"], cfg["layer_norm_epsilon"]
    act = {"gelu_new": lambda a: 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3))),
           "gelu": lambda a: 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2))),
           "relu": lambda a: np.maximum(a, 0)}[cfg["activation_function"]]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    T = len(tokens)
    x = t["wte.weight"][tokens] + t["wpe.weight"][:T]
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        qkv = ln(x, h + "ln_1") @ t[h + "attn.c_attn.weight"] + t[h + "attn.c_attn.bias"]
        q, k, v = (a.reshape(T, H, -1).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        z = (a / a.sum(-1, keepdims=True)) @ v
        x = x + z.transpose(1, 0, 2).reshape(T, -1) @ t[h + "attn.c_proj.weight"] + t[h + "attn.c_proj.bias"]
        m = act(ln(x, h + "ln_2") @ t[h + "mlp.c_fc.weight"] + t[h + "mlp.c_fc.bias"])
        x = x + m @ t[h + "mlp.c_proj.weight"] + t[h + "mlp.c_proj.bias"]
    x = ln(x, "ln_f")
    return x @ (t["wte.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]).T


def _random_leaves(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (np.asarray(v) + rng.normal(0, 0.3, v.shape)).astype(np.float32)
            for k, v in named_leaves(build_model(cfg, seed=seed)).items()}


def _write_run(run_dir, cfg: ModelConfig, steps=(0, 10, 20)) -> dict[int, dict[str, np.ndarray]]:
    store.write_run_json(run_dir, {"model": cfg.to_dict(), "config": {"task": {"bos_token": 1}, "init_seed": 3}})
    ckpts = {s: _random_leaves(cfg, s) for s in steps}
    with store.ArchiveWriter(run_dir) as w:
        for s, leaves in ckpts.items():
            w.write_checkpoint(s, leaves)
    return ckpts


GPT2_VARIANTS = {
    "untied_gelu_new": {},
    "tied": {"tied_unembed": True},
    "relu_narrow_mlp": {"activation": "relu", "d_mlp": 48},
    "gelu_3_layers": {"activation": "gelu", "n_layers": 3, "n_heads": 2},
}


@pytest.mark.parametrize("variant", slow_except(sorted(GPT2_VARIANTS), ["tied", "relu_narrow_mlp"]))
def test_exported_tensors_give_our_logits_under_an_independent_gpt2_forward(tmp_path, variant):
    cfg = ModelConfig(**{"n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 40, "n_ctx": 24,
                         **GPT2_VARIANTS[variant]})
    ckpts = _write_run(tmp_path / "run", cfg)
    out = export_hf(tmp_path / "run", 10, tmp_path / "hf")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["model_type"] == "gpt2" and hf_cfg["architectures"] == ["GPT2LMHeadModel"]
    assert (hf_cfg["n_layer"], hf_cfg["n_head"], hf_cfg["n_embd"], hf_cfg["n_positions"]) == \
        (cfg.n_layers, cfg.n_heads, 32, 24)
    assert hf_cfg["activation_function"] == cfg.activation and hf_cfg["n_inner"] == cfg.d_mlp
    assert hf_cfg["tie_word_embeddings"] == cfg.tied_unembed and hf_cfg["bos_token_id"] == 1
    tensors = load_file(out / "model.safetensors")
    assert ("lm_head.weight" in tensors) == (not cfg.tied_unembed)
    assert tensors["h.0.attn.c_attn.weight"].shape == (32, 96)
    model = load_named_leaves(build_model(cfg), ckpts[10])
    tokens = np.random.default_rng(0).integers(0, 40, size=20)
    ours = np.asarray(jax.jit(model.__call__)(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_gpt2_forward(tensors, hf_cfg, tokens), atol=2e-5, rtol=2e-5)


def test_c_attn_columns_are_q_k_v_with_heads_contiguous(tmp_path):
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, vocab_size=10, n_ctx=8)
    ckpts = _write_run(tmp_path / "run", cfg, steps=(0,))
    t = load_file(export_hf(tmp_path / "run", 0, tmp_path / "hf") / "model.safetensors")
    leaves = ckpts[0]
    w, b = t["h.0.attn.c_attn.weight"], t["h.0.attn.c_attn.bias"]
    # head 1's key is columns d + 1*e .. d + 2*e (q block, then head 0 of the k block)
    assert np.array_equal(w[:, 8 + 4:8 + 8], leaves["blocks.0.attn.W_K"][1])
    assert np.array_equal(b[16:20], leaves["blocks.0.attn.b_V"][0])
    assert np.array_equal(t["h.0.attn.c_proj.weight"][4:8], leaves["blocks.0.attn.W_O"][1])


GPT2_OVERRIDES = [*TINY_OVERRIDES, "train.steps=40"]  # the tiny run's shape, 40 steps (the last --set wins)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    """A 40-step induction-gpt2 run (full GPT-2 blocks, tied embeddings), 5 checkpoints."""
    from trainer.config import resolve_config
    from trainer.train import train

    run = tmp_path_factory.mktemp("gpt2") / "run"
    train(resolve_config("induction-gpt2", None, GPT2_OVERRIDES), run)
    return run


TYPES = ["induction_score", "prev_token_score", "loss"]


def test_export_import_round_trip_is_bit_identical_with_identical_scalars(gpt2_run, copy_run, tmp_path):
    original = copy_run(gpt2_run, "original")
    reader = store.open_archive(original)
    steps = reader.steps.tolist()
    assert steps == [0, 10, 20, 30, 40]
    for s in steps:
        r = runner.invoke(app, ["export", str(original), "--step", str(s), "--format", "hf", "-o",
                                str(tmp_path / "hf" / f"checkpoint-{s}")])
        assert r.exit_code == 0, r.output
    dirs = [str(tmp_path / "hf" / f"checkpoint-{s}") for s in steps[::-1]]  # any order: sorted by step
    imported = import_hf(dirs, tmp_path / "imported")
    back = store.open_archive(imported)
    assert back.steps.tolist() == steps and back.leaf_specs == reader.leaf_specs
    for s in steps:
        a, b = reader.load(s), back.load(s)
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (s, name)
    info, info_back = store.read_run_json(original), store.read_run_json(imported)
    assert info_back["model"] == info["model"] and info_back["config"] == info["config"]
    assert info_back["source"] == "hf-gpt2 import" and len(info_back["imported_from"]) == 5
    scalars.compute([str(original), str(imported)], TYPES)
    ds_a, ds_b = store.open_scalars(original), store.open_scalars(imported)
    for name in TYPES:
        assert ds_a[name].attrs["probe_hash"] == ds_b[name].attrs["probe_hash"]
        np.testing.assert_array_equal(ds_a[name].values, ds_b[name].values)
    assert np.isfinite(ds_a.induction_score.values).all()
    # and the imported run exports again to the same files' tensors
    again = export_hf(imported, 20, tmp_path / "again")
    first, second = load_file(tmp_path / "hf" / "checkpoint-20" / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def _import_app() -> typer.Typer:
    from cli._import import import_command

    sub = typer.Typer()
    sub.command()(import_command)
    return sub


def test_cli_import_with_steps_option(gpt2_run, tmp_path):
    for s in (10, 30):
        export_hf(gpt2_run, s, tmp_path / f"ckpt_{'a' if s == 10 else 'b'}")
    r = runner.invoke(_import_app(), [str(tmp_path / "ckpt_a"), str(tmp_path / "ckpt_b"), "--out",
                                      str(tmp_path / "run"), "--steps", "100,300"])
    assert r.exit_code == 0, r.output
    assert store.open_archive(tmp_path / "run").steps.tolist() == [100, 300]
    r = runner.invoke(_import_app(), [str(tmp_path / "ckpt_a"), "--out", str(tmp_path / "run2"), "--steps", "1,2"])
    assert r.exit_code == 2 and "--steps gives 2 steps for 1 directories" in r.output
    assert not (tmp_path / "run2").exists()


NOT_GPT2 = {
    "attn_only": ({"attn_only": True}, "attention-only"),
    "no_layernorm": ({"layernorm": False}, "no LayerNorm"),
    "rope": ({"positional": "rope"}, "rotary position embeddings"),
    "swiglu": ({"activation": "swiglu"}, "activation is swiglu"),
    "no_qkv_bias": ({"qkv_bias": False}, "no qkv_bias"),
    "no_biases": ({"out_bias": False, "mlp_bias": False}, "no out_bias, mlp_bias"),
    "unembed_bias": ({"unembed_bias": True}, "unembedding bias"),
    "classifier": ({"head": "classifier", "d_in": 8, "n_labels": 4}, "sequence-classifier head"),
}


@pytest.mark.parametrize("variant", sorted(NOT_GPT2))
def test_architectures_gpt2_cannot_express_are_refused_by_name(variant):
    overrides, phrase = NOT_GPT2[variant]
    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=10, n_ctx=8, **overrides)
    with pytest.raises(ValueError, match=rf"cannot be written as a GPT-2 checkpoint: .*{phrase}"):
        check_gpt2_compatible(cfg)


def test_cli_export_of_attention_only_run_fails_cleanly(tiny_run, tmp_path):
    r = runner.invoke(app, ["export", str(tiny_run), "--step", "10", "--format", "hf", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "error:" in r.output and "attention-only" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["export", str(tiny_run), "--step", "10", "--format", "onnx", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--format 'onnx' is not supported" in r.output


def test_cli_export_takes_last_and_refuses_two_steps(gpt2_run, tmp_path):
    last = int(store.open_archive(gpt2_run).steps[-1])
    r = runner.invoke(app, ["export", str(gpt2_run), "--step", "last", "-o", str(tmp_path / "last")])
    assert r.exit_code == 0, r.output
    assert f"(step {last})" in r.output and (tmp_path / "last" / "model.safetensors").is_file()
    r = runner.invoke(app, ["export", str(gpt2_run), "--step", "0,10", "-o", str(tmp_path / "two")])
    assert r.exit_code == 2 and "--step takes one step" in r.output and not (tmp_path / "two").exists()


def test_export_errors_write_nothing(gpt2_run, tmp_path):
    with pytest.raises(KeyError, match=r"step 15 is not a committed checkpoint.*nearest committed steps: 10, 20"):
        export_hf(gpt2_run, 15, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"already exists and is not empty; pass a new directory"):
        export_hf(gpt2_run, 10, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["full"]  # no partial directory left behind


@pytest.fixture
def two_ckpts(tmp_path):
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, vocab_size=12, n_ctx=8)
    _write_run(tmp_path / "src", cfg, steps=(0, 5))
    for s in (0, 5):
        export_hf(tmp_path / "src", s, tmp_path / "in" / f"step-{s}")
    return tmp_path / "in", cfg


def _edit(path, fn):
    tensors = load_file(path)
    fn(tensors)
    os.remove(path)
    save_file(tensors, path, metadata={"format": "pt"})


def _assert_nothing_written(base, out):
    assert not out.exists()
    assert [p for p in os.listdir(out.parent) if "partial" in p] == []


def test_import_refuses_missing_or_mismatched_tensor_and_writes_nothing(two_ckpts, tmp_path):
    src, _ = two_ckpts
    dirs = [src / "step-0", src / "step-5"]
    out = tmp_path / "out"
    bad = src / "step-5" / "model.safetensors"
    _edit(bad, lambda t: t.pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=rf"'{re.escape(str(bad))}' has no tensor 'h.1.mlp.c_fc.bias'"):
        import_hf(dirs, out)
    _assert_nothing_written(tmp_path, out)
    _edit(bad, lambda t: t.update({"h.1.mlp.c_fc.bias": np.zeros(10, np.float32)}))
    with pytest.raises(ValueError, match=rf"tensor 'h.1.mlp.c_fc.bias' in '{re.escape(str(bad))}' has shape \(10,\), config.json "
                                         r"implies \(64,\)"):
        import_hf(dirs, out)
    _assert_nothing_written(tmp_path, out)
    _edit(bad, lambda t: t.update({"h.1.mlp.c_fc.bias": np.zeros(64, np.float32), "v_head.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match=r"holds tensor 'v_head.weight', which is not part of a GPT-2 language model"):
        import_hf(dirs, out)
    _edit(bad, lambda t: t.update({"h.0.attn.c_proj.bias": np.zeros(16, np.int32)}) or t.pop("v_head.weight"))
    with pytest.raises(ValueError, match=r"tensor 'h.0.attn.c_proj.bias' in .* has dtype I32"):
        import_hf(dirs, out)
    _assert_nothing_written(tmp_path, out)


def test_import_refuses_bad_directories(two_ckpts, tmp_path):
    src, _ = two_ckpts
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory '.*nope' does not exist"):
        import_hf([src / "step-0", tmp_path / "nope"], out)
    shutil.copytree(src / "step-0", tmp_path / "unnamed")
    (tmp_path / "unnamed" / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads((src / "step-0" / "config.json").read_text()).items()
                    if k != "derived_scalars"}))
    with pytest.raises(ValueError, match=r"cannot tell the step of '.*unnamed': name the directory like step-1000"):
        import_hf([tmp_path / "unnamed"], out)
    with pytest.raises(ValueError, match=r"both give step 0; pass --steps"):
        import_hf([src / "step-0", src / "step-0"], out)
    shutil.copytree(src / "step-5", tmp_path / "step-7")
    cfg = json.loads((tmp_path / "step-7" / "config.json").read_text())
    (tmp_path / "step-7" / "config.json").write_text(json.dumps({**cfg, "n_head": 4}))
    with pytest.raises(ValueError, match=r"'.*step-7' has a different architecture from '.*step-0' \(n_heads: 4 vs 2\)"):
        import_hf([src / "step-0", tmp_path / "step-7"], out)
    (tmp_path / "step-7" / "config.json").write_text(json.dumps({**cfg, "activation_function": "silu"}))
    with pytest.raises(ValueError, match=r"activation_function 'silu'; importable ones are"):
        import_hf([tmp_path / "step-7"], out)
    (tmp_path / "step-7" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "step-7" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model.safetensors' is not a readable safetensors file"):
        import_hf([tmp_path / "step-7"], out)
    os.remove(tmp_path / "step-7" / "config.json")
    with pytest.raises(FileNotFoundError, match=r"'.*step-7' has no config.json"):
        import_hf([tmp_path / "step-7"], out)
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(FileExistsError, match=r"already exists and is not empty"):
        import_hf([src / "step-0"], out)
    assert os.listdir(out) == ["x"]


def test_import_crash_mid_write_leaves_no_run(two_ckpts, tmp_path, monkeypatch):
    src, _ = two_ckpts
    calls = []

    def boom(self, step, leaves):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, step, leaves)

    real = store.ArchiveWriter.write_checkpoint
    monkeypatch.setattr(store.ArchiveWriter, "write_checkpoint", boom)
    with pytest.raises(OSError, match="No space left"):
        import_hf([src / "step-0", src / "step-5"], tmp_path / "out", copy=True)
    assert calls == [0, 5]
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_import_in_place_crash_writing_the_manifest_leaves_no_run(two_ckpts, tmp_path, monkeypatch):
    import store.references

    src, _ = two_ckpts
    calls = []

    def boom(path, write):
        calls.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.references, "atomic_write", boom)
    with pytest.raises(OSError, match="No space left"):
        import_hf([src / "step-0", src / "step-5"], tmp_path / "out")
    assert calls and calls[0].endswith("checkpoints.ref.json")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_import_accepts_transformer_prefix_buffers_fp16_and_hf_names(two_ckpts, tmp_path):
    src, cfg = two_ckpts
    d = tmp_path / "checkpoint-300"
    shutil.copytree(src / "step-5", d)
    tensors = load_file(d / "model.safetensors")
    want = {k: v.copy() for k, v in tensors.items()}
    renamed = {("" if k == "lm_head.weight" else "transformer.") + k: v.astype(np.float16) for k, v in tensors.items()}
    renamed["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))  # the causal-mask buffer
    os.remove(d / "model.safetensors")
    save_file(renamed, d / "model.safetensors", metadata={"format": "pt"})
    run = import_hf([d], tmp_path / "run")
    leaves = store.open_archive(run).load(300)
    assert all(v.dtype == np.float32 for v in leaves.values())
    again = load_file(export_hf(run, 300, tmp_path / "again") / "model.safetensors")
    for k, v in want.items():
        assert np.array_equal(again[k], v.astype(np.float16).astype(np.float32)), k
    assert store.read_run_json(run)["model"] == cfg.to_dict()


def test_import_of_a_foreign_checkpoint_gets_a_computable_run(two_ckpts, tmp_path):
    """A directory without our provenance block (as transformers writes it) still imports and computes."""
    src, cfg = two_ckpts
    d = tmp_path / "step-42"
    shutil.copytree(src / "step-5", d)
    hf = json.loads((d / "config.json").read_text())
    hf.pop("derived_scalars")
    hf["bos_token_id"] = 11
    (d / "config.json").write_text(json.dumps(hf))
    run = import_hf([d], tmp_path / "run")
    info = store.read_run_json(run)
    assert info["config"]["task"]["bos_token"] == 11 and info["steps"] == [42]
    scalars.compute(run, ["prev_token_score"])
    assert store.open_scalars(run).prev_token_score.shape == (1, 2, 2)
