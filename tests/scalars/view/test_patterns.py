"""The `attention_pattern` type against a per-sequence reference, and `scalars patterns` (PNG, HTML, errors)."""

from __future__ import annotations

import json
import re

import jax
import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from scalars.view._html import SCALE
from trainer.model import ModelConfig, build_model, load_named_leaves

runner = CliRunner()
STEPS = [0, 10, 20, 30, 40, 50, 60]  # the tiny run's checkpoints


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one-line messages, so substrings match


@pytest.fixture(scope="module")
def patterned(tiny_run, tmp_path_factory):
    """A copy of the tiny run with attention_pattern computed by `scalars compute --type attention_pattern`."""
    import shutil

    run = tmp_path_factory.mktemp("patterns") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock-*"))
    r = runner.invoke(app, ["compute", str(run), "--type", "attention_pattern", "-q"])
    assert r.exit_code == 0, r.output
    return run


def _model_at(run, step):
    info = store.read_run_json(run)
    config = ModelConfig.from_dict(info["model"])
    return load_named_leaves(build_model(config), store.open_archive(run).load(step)), info, config


def test_values_match_a_per_sequence_reference(patterned):
    ds = store.open_scalars(patterned)
    da = ds.attention_pattern
    assert da.dims == ("step", "layer", "head", "query_pos", "key_pos")
    assert da.attrs["probe"] == "repeated_tokens" and ds.step.values.tolist() == STEPS
    for step in (0, 40):
        model, info, config = _model_at(patterned, step)
        probe = scalars.engine.build_run_probe("default", patterned, info, config)
        assert da.attrs["probe_hash"] == probe.content_hash and da.sizes["query_pos"] == probe.seq_len == 63
        per_sequence = []  # one un-batched, un-jitted forward per probe sequence
        for tokens in np.asarray(probe.arrays["tokens"]):
            out = model.call_with_all_aux(jax.numpy.asarray(tokens))
            per_sequence.append(np.stack([np.asarray(o["attn_output"]["pattern"]) for o in out["layer_outputs"]]))
        expected = np.mean(per_sequence, axis=0)  # (layer, head, S, S)
        got = da.sel(step=step).values
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(da.sel(step=0).values, da.sel(step=60).values, atol=1e-3)  # training moved it


def test_attention_pattern_is_in_all_and_sized_by_the_probe():
    from scalars.engine._plan import applicable_types

    assert "attention_pattern" in applicable_types(ModelConfig(head="lm"))
    assert "attention_pattern" in applicable_types(ModelConfig(head="classifier", vocab_size=0, d_in=4, n_labels=3))
    config = ModelConfig(n_layers=3, n_heads=2, d_model=16, vocab_size=16, n_ctx=32)
    probe = scalars.probes.repeated_tokens(vocab_size=16, T=5, batch=2)
    assert scalars.registry.type_shape("attention_pattern", config, probe) == (3, 2, 11, 11)
    regression = scalars.probes.from_regression_arrays(np.zeros((2, 4, 3)), np.zeros((2, 4)))
    assert scalars.registry.type_shape("attention_pattern", config, regression) == (3, 2, 7, 7)  # x0 y0 ... x3


def _page_data(path) -> dict:
    text = path.read_text()
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    block = re.search(r'<script type="application/json" id="pattern-data">(.*?)</script>', text, re.S)
    return json.loads(block.group(1))


def test_patterns_one_head_png_and_html(patterned, tmp_path, figures):
    r = runner.invoke(app, ["patterns", str(patterned), "--step", "40", "--layer", "1", "--head", "0",
                            "-o", str(tmp_path / "out" / "p.png")])
    assert r.exit_code == 0, r.output
    assert "computing" not in r.output  # already stored: nothing recomputed
    png, page = tmp_path / "out" / "p.png", tmp_path / "out" / "p.html"
    img = matplotlib.image.imread(png)
    assert img[..., :3].var() > 1e-3
    (panels, fig), = figures
    assert len(panels) == 1 and panels[0].get_title() == "layer 1 head 0"
    stored = store.open_scalars(patterned).attention_pattern
    np.testing.assert_array_equal(panels[0].images[0].get_array(), stored.sel(step=40, layer=1, head=0).values)
    info = store.read_run_json(patterned)
    probe = scalars.engine.build_run_probe("default", patterned, info, ModelConfig.from_dict(info["model"]))
    tokens = probe.arrays["tokens"][0]
    ticks = [t.get_text() for t in panels[0].get_xticklabels()]
    assert len(ticks) == 63 and ticks[0] == "BOS" and ticks[1:] == [str(int(t)) for t in tokens[1:]]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ticks

    data = _page_data(page)
    assert data["steps"] == STEPS and (data["n_layers"], data["n_heads"], data["seq_len"]) == (2, 2, 63)
    assert data["initial"] == {"step_index": 4, "layer": 1, "head": 0} and data["labels"] == ticks
    decoded = np.asarray(data["patterns"], np.float64).reshape(7, 2, 2, 63, 63) / SCALE
    np.testing.assert_allclose(decoded, stored.values, atol=0.5 / SCALE + 1e-7)


def test_patterns_grid_computes_what_is_missing(tiny_run, copy_run, tmp_path, figures):
    run = copy_run(tiny_run)
    r = runner.invoke(app, ["patterns", str(run), "--step", "60", "-o", str(tmp_path / "grid")])
    assert r.exit_code == 0, r.output
    assert "computing attention_pattern for 7 checkpoint(s)" in r.output and "4 panels at step 60" in r.output
    assert store.computed_mask(run, "attention_pattern").all()
    (panels, fig), = figures
    assert [a.get_title() for a in panels] == [f"layer {li} head {h}" for li in (0, 1) for h in (0, 1)]
    assert [t.get_text() for t in panels[0].get_yticklabels()][0] == "BOS"  # tokens on the outer axes only
    assert all(t.get_text() == "" for t in panels[1].get_yticklabels())
    assert (tmp_path / "grid.png").is_file() and _page_data(tmp_path / "grid.html")["initial"]["step_index"] == 6
    r = runner.invoke(app, ["patterns", str(run), "--step", "60", "--head", "1", "-o", str(tmp_path / "h1")])
    assert r.exit_code == 0 and "computing" not in r.output and "2 panels" in r.output


@pytest.mark.parametrize("args, message", [
    (["--step", "35"], "step 35 is not a checkpoint in"),
    (["--step", "35"], "nearest stored steps: 20, 30, 40"),
    (["--step", "30", "--layer", "2"], "layer 2 is out of range: this run has layers 0-1"),
    (["--step", "30", "--head", "-1"], "head -1 is out of range: this run has heads 0-1"),
])
def test_patterns_bad_requests_are_one_sentence(patterned, tmp_path, args, message):
    r = runner.invoke(app, ["patterns", str(patterned), *args, "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_patterns_without_the_variable_and_no_compute(tiny_run, copy_run, tmp_path):
    run = copy_run(tiny_run)
    r = runner.invoke(app, ["patterns", str(run), "--step", "30", "--no-compute", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"stores no attention_pattern; compute it with `scalars compute {run} --type attention_pattern`" in r.output
    runner.invoke(app, ["compute", str(run), "--type", "attention_pattern", "--steps", "0,10", "-q"])
    r = runner.invoke(app, ["patterns", str(run), "--step", "30", "--no-compute", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "step 30 is not a stored checkpoint of attention_pattern" in r.output
    assert "nearest stored steps: 0, 10" in r.output and not store.computed_mask(run, "attention_pattern")[2]
    r = runner.invoke(app, ["patterns", str(tmp_path / "nope"), "--step", "0"])
    assert r.exit_code == 2 and "is not a run directory" in r.output and "Traceback" not in r.output


def test_axis_labels_name_tokens_or_roles():
    from scalars.view import axis_labels

    tokens = np.array([[0, 5, 9, 5, 9], [0, 5, 9, 5, 9]])
    labels, note = axis_labels(scalars.probes.from_tokens(tokens, name="fixed"))
    assert labels == ["0", "5", "9", "5", "9"] and note == "tokens of probe 'fixed'"  # one prompt: exact tokens
    labels, note = axis_labels(scalars.probes.repeated_tokens(vocab_size=16, T=2, batch=3, seed=1))
    assert labels[0] == "BOS" and labels[1:3] == labels[3:5] and "sequence 0 of the 3 sequences" in note
    rng = np.random.default_rng(0)
    classifier = scalars.probes.from_classifier_arrays(rng.normal(size=(2, 3, 4)), rng.integers(0, 2, size=(2, 3)))
    assert axis_labels(classifier)[0] == ["x0", "y0", "x1", "y1", "q"]
    regression = scalars.probes.from_regression_arrays(rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3)))
    assert axis_labels(regression)[0] == ["x0", "y0", "x1", "y1", "x2"]
