"""docs/plugins.md, executed: every plugin file and Python block runs on a small trained run, every bash
line through the CLI, and the stored values are checked against a numpy forward written here from the
weights; the tables of `register` parameters, `ctx` helpers, the `clean` layout and probe metadata are
checked against the code, so the page cannot drift from it."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import io
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from scalars import registry as _registry
from scalars.registry import code_fingerprint
from trainer.model import ModelConfig, build_model
from trainer.schedules import AdaptiveSaver, ScheduleSpec
from tests._paths import ROOT

DOC = ROOT / "docs" / "plugins.md"
FILE_HEADER = re.compile(r"^# file: (\S+\.py)\n")


def _text() -> str:
    return DOC.read_text()


def _blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in document order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", _text(), flags=re.DOTALL | re.MULTILINE)


def _plugin_blocks() -> dict[str, str]:
    return {m.group(1): body for lang, body in _blocks() if lang == "python" and (m := FILE_HEADER.match(body))}


def _table(header: str) -> list[list[str]]:
    """The cells of each row of the one table whose header line starts with `header`."""
    lines = _text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, header
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


@pytest.fixture
def registry_guard():
    """Leave the type registry, and the record of loaded plugins, as this test found them."""
    scalars.list_types()  # built-ins first
    names, plugins, eps = set(_registry._REGISTRY), set(_registry._LOADED_PLUGINS), set(_registry._LOADED_ENTRY_POINTS)
    yield
    for name in set(_registry._REGISTRY) - names:
        del _registry._REGISTRY[name]
    for key in set(_registry._LOADED_PLUGINS) - plugins:
        del _registry._LOADED_PLUGINS[key]
    for key in set(_registry._LOADED_ENTRY_POINTS) - eps:
        del _registry._LOADED_ENTRY_POINTS[key]


# -- an independent forward in numpy (float64), from the stored weights -------------------------------

def _leaves(run: Path, step: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in store.open_archive(run).load(step).items()}


def _ln(x, w, b, eps=1e-5):
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c ** 2).mean(-1, keepdims=True) + eps) * w + b


def _np_forward(w: dict, tokens: np.ndarray, n_layers: int, zero_head: tuple[int, int] | None = None) -> dict:
    """Attention-only pre-LN transformer with learned positions (the tiny run's architecture).
    `zero_head=(l, h)` zeroes W_O[h] of block l: that head writes nothing into the residual stream."""
    B, S = tokens.shape
    x = w["embed.W_E"][tokens] + w["embed.W_pos"][:S]
    out = {"pattern": [], "q": [], "k": [], "v": [], "resid_post": []}
    causal = np.tril(np.ones((S, S), bool))
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        h = _ln(x, w[p + "ln1.w"], w[p + "ln1.b"])
        q, k, v = (np.einsum("btd,hde->bhte", h, w[p + f"attn.W_{n}"]) + w[p + f"attn.b_{n}"][None, :, None]
                   for n in "QKV")
        scores = np.where(causal, np.einsum("bhqe,bhke->bhqk", q, k) / np.sqrt(q.shape[-1]), -np.inf)
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bhke->bhqe", pattern, v)
        W_O = w[p + "attn.W_O"].copy()
        if zero_head is not None and zero_head[0] == layer:
            W_O[zero_head[1]] = 0.0
        x = x + np.einsum("bhte,hed->btd", z, W_O) + w[p + "attn.b_O"]
        for name, value in (("pattern", pattern), ("q", q), ("k", k), ("v", v), ("resid_post", x)):
            out[name].append(value)
    logits = _ln(x, w["ln_final.w"], w["ln_final.b"]) @ w["W_U"]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    out["loss"] = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1).mean()
    return out


# -- the walkthrough -----------------------------------------------------------------------------------

def _run_doc(workdir: Path) -> tuple[list[tuple[str, int, str]], str]:
    """Execute the page's blocks in order; returns (bash line, exit code, output) per line and the
    Python blocks' stdout."""
    runner = CliRunner()
    lines, stdout, ns = [], io.StringIO(), {}
    for lang, body in _blocks():
        if lang == "python":
            m = FILE_HEADER.match(body)
            if m:
                (workdir / m.group(1)).write_text(body)
                continue
            with contextlib.redirect_stdout(stdout):
                exec(compile(body, str(DOC), "exec"), ns)
        elif lang == "bash":
            for line in filter(str.strip, body.splitlines()):
                args = shlex.split(line, comments=True)
                assert args[0] == "scalars", line
                r = runner.invoke(app, args[1:])
                refused = "# refused" in line
                assert (r.exit_code == 2) if refused else (r.exit_code == 0), (line, r.output, r.exception)
                lines.append((line, r.exit_code, r.output))
        else:
            assert lang == "toml", f"a ```{lang} block is not executed by this test"
    return lines, stdout.getvalue()


def test_the_walkthrough_runs_and_stores_what_an_independent_forward_computes(
        tiny_run, copy_run, tmp_path, monkeypatch, registry_guard):
    run = copy_run(tiny_run, "work/runs/tiny")
    work = run.parent.parent
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "200")
    lines, printed = _run_doc(work)

    # what the Python blocks print is what their comments say
    for expected in ["0\n", "('step', 'layer', 'head')", "attention probability",
                     "my_probe 32 63 {'source': 'my_probe.npy', 'T': 31}", "(64, 63)", "{'note': 'no repeat'}"]:
        assert expected in printed, (expected, printed)
    assert re.search(r"^repeated_tokens 1 [0-9a-f]{16}$", printed, flags=re.MULTILINE), printed
    refused = [out for line, _, out in lines if "# refused" in line]
    assert len(refused) == 1 and "computed on another probe" in " ".join(refused[0].split())

    ds = store.open_scalars(run)
    steps = ds.step.values.tolist()
    assert steps == [0, 10, 20, 30, 40, 50, 60]
    config = ModelConfig.from_dict(store.read_run_json(run)["model"])
    L, H = config.n_layers, config.n_heads
    default = scalars.probes.repeated_tokens(batch=16, T=31, vocab_size=64).arrays["tokens"]  # the doc's "16 sequences"
    big = scalars.probes.repeated_tokens(batch=64, T=31, vocab_size=64)
    mine = np.load(work / "my_probe.npy")

    abl = ds.head_ablation_delta.values
    for i, step in enumerate(steps):
        w = _leaves(run, step)
        clean16, clean64, cleanmine = (_np_forward(w, t, L) for t in (default, big.arrays["tokens"], mine))
        # bos_attention was recomputed (--force) on the 64-sequence probe
        np.testing.assert_allclose(ds.bos_attention.values[i],
                                   np.stack([p[..., 0].mean((0, 2)) for p in clean64["pattern"]]), atol=2e-6)
        np.testing.assert_allclose(ds.resid_norm.values[i],
                                   np.stack([np.linalg.norm(r, axis=-1).mean(0) for r in clean64["resid_post"]]),
                                   rtol=2e-5)
        np.testing.assert_allclose(ds.qkv_norm.values[i], np.stack(
            [[np.linalg.norm(cleanmine[s][layer], axis=-1).mean() for s in "qkv"] for layer in range(L)]), rtol=2e-5)
        np.testing.assert_allclose(ds.ov_norm.values[i], [[np.linalg.norm(
            w[f"blocks.{layer}.attn.W_V"][h] @ w[f"blocks.{layer}.attn.W_O"][h]) for h in range(H)] for layer in range(L)],
            rtol=2e-5)
        # the ablation example: the loss of the model whose W_O[0] of block 1 is zeroed, minus the clean loss
        want = _np_forward(w, default, L, zero_head=(1, 0))["loss"] - clean16["loss"]
        np.testing.assert_allclose(abl[i], want, atol=2e-5)
        every = [[_np_forward(w, default, L, zero_head=(layer, h))["loss"] - clean16["loss"] for h in range(H)]
                 for layer in range(L)]
        np.testing.assert_allclose(ds.head_ablation_delta_all.values[i], every, atol=2e-5)
    np.testing.assert_allclose(ds.head_ablation_delta_reuse.values, abl, atol=1e-5)
    np.testing.assert_allclose(ds.head_ablation_delta_all.values[:, 1, 0], abl, atol=1e-5)

    # `check` warned at exactly the steps where removing the head lowered the loss
    out = " ".join(next(o for line, _, o in lines if "head_ablation_delta_all" in line).split())
    warned = {int(s) for s in re.findall(r"head_ablation_delta at step (\d+): removing head 1\.0 lowered", out)}
    assert warned == {s for s, v in zip(steps, abl) if v < 0}

    # the stored attrs, as the page's table says
    a = ds.bos_attention.attrs
    assert a["probe"] == "repeated_tokens" and a["probe_hash"] == big.content_hash and a["version"] == "1"
    assert a["definition"] == scalars.get_type("bos_attention").fingerprint and "options" not in a
    a = ds.head_ablation_delta.attrs
    assert "definition" not in a and json.loads(a["options"]) == {"layer": 1, "head": 0} and a["units"] == "nats"
    assert ds.qkv_norm.attrs["probe"] == "my_probe"
    assert ds.qkv_norm.attrs["probe_hash"] == scalars.probes.from_npy(work / "my_probe.npy").content_hash
    assert ds.ov_norm.attrs["probe"] == "none (weights only)" and ds.ov_norm.attrs["probe_hash"] == "none"
    assert ds.side.values.tolist() == ["q", "k", "v"] and ds.pos.size == 63
    assert ds.head_ablation_delta.dims == ("step",)
    assert ds.head_ablation_delta.attrs["probe_hash"] == scalars.probes.from_tokens(default, name="repeated_tokens", metadata={
        "kind": "repeated_tokens", "seed": 0, "T": 31, "bos": 0, "vocab_size": 64}).content_hash  # the default probe

    # the failures the page describes: validate at planning, a missing head while tracing
    base = ["compute", "runs/tiny", "--plugin", "ablation_types.py", "--type", "head_ablation_delta"]
    for opt, says in [("layer=1.5", "option layer must be a non-negative integer"),
                      ("layer=5", "type 'head_ablation_delta' raised ValueError: head 5.0 does not exist")]:
        r = CliRunner().invoke(app, base + ["--option", f"head_ablation_delta.{opt}", "--force"])
        assert r.exit_code == 2 and says in " ".join(r.output.split()), r.output
    np.testing.assert_array_equal(store.open_scalars(run).head_ablation_delta.values, abl)  # nothing stored


# -- what `register`, `ctx`, `clean` and probes are documented to be ------------------------------------

def test_register_parameters_are_the_documented_ones():
    rows = {re.fullmatch(r"`(\w+)`", r[0]).group(1): r[1] for r in _table("| parameter | default |")}
    params = dict(inspect.signature(scalars.register).parameters)
    assert params.pop("name").kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert set(rows) == set(params), (set(rows) ^ set(params))
    for name, p in params.items():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, name
        doc = rows[name]
        if doc == "required":
            assert p.default is inspect.Parameter.empty, name
        else:
            assert ast.literal_eval(doc.strip("`")) == p.default and p.default is not inspect.Parameter.empty, name
    # the dataclass defaults behind them agree (what the engine sees when a keyword is left out)
    dst = scalars.DerivedScalarType("x", lambda *a: 0, (), "d")
    assert (dst.probe, dst.units, dst.version, dst.requires, dict(dst.options), dict(dst.sizes), dst.opt_in,
            dst.check, dst.validate) == ("default", "", 1, None, {}, {}, False, None, None)


def _signature_of(text: str) -> list[tuple[str, object, bool]]:
    """(name, default or Parameter.empty, keyword-only) of a documented `(...)` parameter list."""
    fn = ast.parse(f"def f{text}: pass").body[0].args
    pos = [(a.arg, inspect.Parameter.empty, False) for a in fn.args]
    defaults = [ast.literal_eval(d) if d is not None else inspect.Parameter.empty for d in fn.kw_defaults]
    return pos + [(a.arg, d, True) for a, d in zip(fn.kwonlyargs, defaults)]


def test_every_ctx_helper_is_documented_and_exists_with_its_signature():
    documented = {}
    for row in _table("| helper | returns |"):
        m = re.fullmatch(r"`ctx\.(\w+)(\(.*\))?`", row[0])
        assert m, row[0]
        documented[m.group(1)] = m.group(2)
    public = {n for n in dir(scalars.interventions.Context) if not n.startswith("_")} | \
        {f.name for f in scalars.interventions.Context.__dataclass_fields__.values() if not f.name.startswith("_")}
    assert set(documented) == public, set(documented) ^ public
    for name, sig in documented.items():
        attr = inspect.getattr_static(scalars.interventions.Context, name, None)
        if sig is None:  # a field or a property, not a method
            assert name in scalars.interventions.Context.__dataclass_fields__ or isinstance(attr, property), name
            continue
        params = list(inspect.signature(attr).parameters.values())[1:]  # without self
        got = [(p.name, p.default, p.kind is inspect.Parameter.KEYWORD_ONLY) for p in params]
        assert _signature_of(sig) == got, (name, sig, got)


def _flat(tree, path="clean"):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f'{path}["{k}"]')
    elif isinstance(tree, list):
        for v in tree[:1]:
            yield from _flat(v, f"{path}[l]")
    else:
        yield path, tuple(tree.shape)


def test_the_clean_layout_table_is_every_leaf_with_its_shape():
    rows = {}
    for row in _table("| key | shape | what |"):
        path, shape = row[0].strip("`"), row[1].strip("`")
        rows[path] = (tuple(s.strip() for s in shape.strip("()").split(",")), "only with" in row[2])
    sym = {"B": 3, "T": 7, "d": 24, "H": 2, "e": 12, "m": 40, "n_out": 50}
    base = dict(n_layers=2, d_model=24, n_heads=2, d_mlp=40, n_ctx=16, vocab_size=50)
    configs = [ModelConfig(**base), ModelConfig(**base, activation="swiglu"),
               ModelConfig(**base | {"d_mlp": None}, attn_only=True, layernorm=False, positional="rope")]
    seen = set()
    tokens = jnp.zeros((3, 7), jnp.int32)
    for cfg in configs:
        leaves = dict(_flat(jax.eval_shape(jax.vmap(build_model(cfg).call_with_all_aux), tokens)))
        for path, shape in leaves.items():
            assert path in rows, f"{path} {shape} is not in the table"
            doc_shape, _ = rows[path]
            assert shape == tuple(int(x) if x.isdigit() else sym[x] for x in doc_shape), (path, shape, doc_shape)
        for path, (_, conditional) in rows.items():
            assert conditional or path in leaves, f"{path} is documented as always present"
        seen |= set(leaves)
    assert seen == set(rows)
    # `clean` is call_with_all_aux vmapped over the probe batch (what ComputeFn._program passes)
    src = inspect.getsource(scalars.engine.ComputeFn._program)
    assert "jax.vmap(model.call_with_all_aux)(traced.inputs)" in src


def test_probe_metadata_is_as_documented(tmp_path):
    rows = {r[0]: set(re.findall(r"`(\w+)`", r[1])) for r in _table("| built by | metadata |")}
    rt = scalars.probes.repeated_tokens(vocab_size=64)
    assert rt.batch_size == 16 and rt.name == "repeated_tokens"
    assert set(rt.metadata) == rows["`scalars.probes.repeated_tokens(...)` (probe `repeated_tokens`)"]
    toks = rt.arrays["tokens"]
    assert dict(scalars.probes.from_tokens(toks, metadata={"a": 1}).metadata) == {"a": 1, "T": 32}
    assert dict(scalars.probes.from_tokens(toks[:, :10], metadata={"a": 1}).metadata) == {"a": 1}
    np.save(tmp_path / "p.npy", toks)
    assert set(scalars.probes.from_npy(tmp_path / "p.npy").metadata) == {"source", "T"}
    assert rows["`scalars.probes.from_npy(path, ...)` (a `--probe FILE.npy`)"] >= {"source", "T"}
    from scalars.probes._icl import take_every
    assert set(take_every(rt, 4).metadata) == set(rt.metadata) | {"stride"}
    assert "stride" in rows["`NAME:stride=K`"]
    # what a run builds for the probe names the page gives (T = 32, or (n_ctx - 1) // 2 with learned positions)
    from scalars.engine._run_probes import build_run_probe
    info = {"config": {"task": {"bos_token": 0}}}
    for n_ctx, name, shape in [(128, "repeated_tokens", (16, 65)), (64, "repeated_tokens", (16, 63)),
                               (64, "repeated_tokens:batch=64", (64, 63)), (64, "repeated_tokens:batch=8,T=5,seed=3", (8, 11)),
                               (64, "repeated_tokens:stride=4", (4, 63)), (64, "default", (16, 63))]:
        got = build_run_probe(name, tmp_path, info, ModelConfig(n_ctx=n_ctx))
        assert got.arrays["tokens"].shape == shape, (name, n_ctx)
    assert build_run_probe("repeated_tokens:batch=8,T=5,seed=3", tmp_path, info, ModelConfig()).metadata["seed"] == 3
    assert build_run_probe(str(tmp_path / "p.npy"), tmp_path, info, ModelConfig(n_ctx=128)).name == "p"
    ex = scalars.probes.from_classifier_arrays(np.zeros((2, 3, 4)), np.zeros((2, 3), int), metadata={"m": 1})
    rg = scalars.probes.from_regression_arrays(np.zeros((2, 3, 4)), np.zeros((2, 3)), metadata={"m": 1})
    assert dict(ex.metadata) == dict(rg.metadata) == {"m": 1}


def test_the_command_line_defaults_the_page_names():
    from cli._compute import compute_command
    from scalars.engine._run import DEFAULT_STALL_TIMEOUT

    text = " ".join(_text().split())
    stall = inspect.signature(compute_command).parameters["stall_timeout"].default.default
    assert f"`--stall-timeout SECONDS` (default {stall:g})" in text and stall == DEFAULT_STALL_TIMEOUT
    assert "exit code 3" in text and "exit_now(str(exc), code=3)" in inspect.getsource(compute_command)


# -- the definition fingerprint and --force ------------------------------------------------------------

def _module(path: Path, source: str):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"_fp_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FP_BASE = '''
def deco(*a, **k):
    return lambda f: f
def helper(x):
    return x + 1
@deco("a", description="one")
def fn(model, probe, clean, ctx):
    y = helper(1)
    return y * 2
'''


def test_the_fingerprint_ignores_comments_layout_and_decorators_but_not_code(tmp_path):
    fp = lambda src, i: code_fingerprint(_module(tmp_path / f"m{i}.py", src).fn)  # noqa: E731
    base = fp(FP_BASE, 0)
    same = [
        FP_BASE.replace("    y = helper(1)", "    # a comment\n\n    y = helper(\n        1)  # another"),
        FP_BASE.replace('@deco("a", description="one")', '@deco("b", description="two", units="u")'),
        FP_BASE.replace("return x + 1", "return x - 1"),  # a helper the function calls: not covered
    ]
    differ = [
        FP_BASE.replace("return y * 2", "return y * 3"),
        FP_BASE.replace("    y = helper(1)", '    """a docstring"""\n    y = helper(1)'),
        FP_BASE.replace("y = helper(1)\n    return y", "z = helper(1)\n    return z"),
    ]
    assert [fp(s, i + 1) for i, s in enumerate(same)] == [base] * len(same)
    assert base not in [fp(s, i + 10) for i, s in enumerate(differ)]
    assert len(base) == 16 and int(base, 16) >= 0


def _reregister(path: Path, source: str, *names: str) -> None:
    for n in names:
        if n in _registry._REGISTRY:
            scalars.registry.unregister(n)
    path.write_text(source)
    _registry._LOADED_PLUGINS.pop(str(path.resolve()), None)
    assert scalars.load_plugin(path) == sorted(names)


def test_code_edits_force_and_version_behave_as_documented(tiny_run, copy_run, tmp_path, registry_guard):
    run = copy_run(tiny_run)
    v1 = _plugin_blocks()["my_types.py"]
    plug = tmp_path / "plug.py"
    _reregister(plug, v1, "bos_attention")
    scalars.compute(run, ["bos_attention"])
    before = store.open_scalars(run).bos_attention.values

    # a comment, a reflowed line and a new description: the stored cells are kept, nothing recomputed
    edited = v1.replace("    # one (B, H", "    # reworded comment\n\n    # one (B, H").replace(
        '"mean attention from every', '"the mean attention from every')
    _reregister(plug, edited, "bos_attention")
    assert scalars.plan(run, ["bos_attention"])[0].n_cells == 0
    assert store.open_scalars(run).bos_attention.attrs["description"].startswith("mean attention")  # not updated

    # a code edit: refused until --force; --force on some steps replaces the variable and drops the rest
    changed = v1.replace('["pattern"][..., 0]', '["pattern"][..., 1]')
    _reregister(plug, changed, "bos_attention")
    with pytest.raises(store.StoreError, match="another definition"):
        scalars.plan(run, ["bos_attention"])
    rep = scalars.compute(run, ["bos_attention"], steps="0-20", force=True)[0]
    assert any("4 cell(s) of the old definition outside the recomputed steps were dropped" in w for w in rep.warnings)
    after = store.open_scalars(run).bos_attention
    assert not np.isnan(after.values[:3]).any() and np.isnan(after.values[3:]).all()
    assert not np.allclose(after.values[:3], before[:3])
    assert after.attrs["definition"] == scalars.get_type("bos_attention").fingerprint

    # with version=, a code edit keeps the stored cells; --force overwrites only the selected steps in place
    versioned = v1.replace('probe="repeated_tokens",', 'probe="repeated_tokens", version=1,')
    _reregister(plug, versioned, "bos_attention")
    scalars.compute(run, ["bos_attention"], force=True)  # accepted as it is (no fingerprint compared): overwritten
    full = store.open_scalars(run).bos_attention.values
    np.testing.assert_allclose(full, before, rtol=1e-6)
    _reregister(plug, versioned.replace('["pattern"][..., 0]', '["pattern"][..., 1]'), "bos_attention")
    assert scalars.plan(run, ["bos_attention"])[0].n_cells == 0  # accepted: version names the definition
    rep = scalars.compute(run, ["bos_attention"], steps="60", force=True)[0]
    assert rep.cells_computed == 1 and not rep.warnings
    now = store.open_scalars(run).bos_attention.values
    np.testing.assert_array_equal(now[:-1], full[:-1])
    assert np.isfinite(now[-1]).all() and not np.allclose(now[-1], full[-1])
    # a raised version is refused like a code edit
    _reregister(plug, versioned.replace("version=1,", "version=2,"), "bos_attention")
    with pytest.raises(store.StoreError, match="version 1, the registered type is version 2"):
        scalars.plan(run, ["bos_attention"])


# -- loading plugins from a package, and the adaptive schedule -------------------------------------------

def test_the_entry_point_block_registers_a_packaged_plugin(tmp_path, monkeypatch, registry_guard):
    toml_blocks = [body for lang, body in _blocks() if lang == "toml"]
    assert len(toml_blocks) == 1
    (group, eps), = tomllib.loads(toml_blocks[0])["project"]["entry-points"].items()
    assert group == scalars.registry.ENTRY_POINT_GROUP
    (ep_name, target), = eps.items()
    pkg, mod = target.split(".")
    site = tmp_path / "site"
    (site / pkg).mkdir(parents=True)
    (site / pkg / "__init__.py").write_text("")
    (site / pkg / f"{mod}.py").write_text(_plugin_blocks()["my_types.py"])
    info = site / f"{pkg}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{ep_name} = {target}\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert scalars.registry.load_entry_point_plugins() == ["bos_attention"]
        assert scalars.get_type("bos_attention").fingerprint is not None
        r = CliRunner().invoke(app, ["types"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "bos_attention" in r.output
    finally:
        for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
            del sys.modules[name]


def _documented_rule(losses, min_gap=10, max_gap=1000, threshold=0.05, ema=0.9):
    """The page's words: s = ema*s + (1-ema)*loss from the first loss; save when the gap reaches
    max_gap, or min_gap and |s - s_ref| / max(|s_ref|, 1e-12) > threshold."""
    saved, last, s, ref = [], 0, None, None
    for t, loss in losses:
        s = loss if s is None else ema * s + (1 - ema) * loss
        ref = s if ref is None else ref
        gap = t - last
        if gap >= max_gap or (gap >= min_gap and abs(s - ref) / max(abs(ref), 1e-12) > threshold):
            saved.append(t)
            last, ref = t, s
    return saved


def test_the_adaptive_threshold_is_the_relative_change_of_the_smoothed_training_loss(tmp_path):
    text = " ".join(_text().split())
    m = re.search(r"`adaptive:min_gap=(\d+),max_gap=(\d+),threshold=([\d.]+),ema=([\d.]+)` \(those are the defaults\)",
                  text)
    assert m and AdaptiveSaver() == AdaptiveSaver(int(m[1]), int(m[2]), float(m[3]), float(m[4]))
    rng = np.random.default_rng(0)
    losses = list(zip(range(1, 3000), 4 * np.exp(-np.arange(1, 3000) / 400) + 0.3 * rng.random(2999)))
    saver = AdaptiveSaver()
    assert [t for t, x in losses if saver.update(t, x)] == _documented_rule(losses)

    # in training: step t is decided on the training loss of step t-1's update; step 0 is always saved
    from tests.conftest import TINY_OVERRIDES
    from trainer.config import resolve_config
    from trainer.train import train

    spec = "adaptive:min_gap=2,max_gap=12,threshold=0.004"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("checkpoints.", "train.steps"))]
    out = tmp_path / "adaptive"
    train(resolve_config("induction-tiny", None, overrides + ["train.steps=30", f"checkpoints.schedule={spec}"]),
          out)
    loss = store.open_metrics(out).train_loss
    replay = ScheduleSpec.parse(spec).make_saver()
    want = [0] + [t for t in range(1, 31) if replay.update(t, float(loss.sel(step=t - 1)))] + [30]
    got = np.asarray(store.open_archive(out).steps).tolist()
    assert got == sorted(set(want)) and len(got) > 3
