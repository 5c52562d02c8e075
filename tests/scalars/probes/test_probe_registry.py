"""Probes as a registry: built-ins and a plugin's probe are built, checked and stored the same way."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

import scalars
import store
from cli.app import app
from tests._paths import ROOT

DOC = ROOT / "docs" / "extending.md"


def _doc_plugin() -> str:
    """The plugin file of docs/extending.md (its first python block)."""
    block = re.search(r"```python\n(# file: probe_plugin.py\n.*?)```", DOC.read_text(), re.S)
    assert block, "docs/extending.md lost its probe_plugin.py block"
    return block.group(1)


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "probe_plugin.py"
    path.write_text(_doc_plugin())
    yield path
    for name in ("attention_to_first",):
        if name in {t.name for t in scalars.list_types()}:
            scalars.registry.unregister(name)
    if "constant_tokens" in {b.name for b in scalars.probes.list_probes()}:
        scalars.probes.unregister_probe("constant_tokens")


def test_builtin_probes_are_registered_by_head():
    assert {b.name for b in scalars.probes.list_probes("lm")} == {"repeated_tokens"}
    assert {b.name for b in scalars.probes.list_probes("regression")} == {"regression", "regression_pool"}
    assert {b.name for b in scalars.probes.list_probes("classifier")} == {"icl_dynamics"}


def test_a_plugin_adds_a_probe_and_a_type_on_it_end_to_end(plugin, tiny_run, copy_run):
    """The two commands of docs/extending.md: the type's own probe, then another batch with --force."""
    run = copy_run(tiny_run)
    res = CliRunner().invoke(app, ["compute", str(run), "--plugin", str(plugin), "--type", "attention_to_first", "-q"])
    assert res.exit_code == 0, res.output
    info, config = scalars.engine.load_run_model_config(run)
    default = scalars.engine.build_run_probe("constant_tokens", run, info, config)
    assert default.batch_size == 4 and set(default.arrays["tokens"].ravel().tolist()) == {3}
    assert store.open_scalars(run)["attention_to_first"].attrs["probe_hash"] == default.content_hash
    res = CliRunner().invoke(app, ["compute", str(run), "--plugin", str(plugin), "--type", "attention_to_first",
                                   "--probe", "constant_tokens:batch=2,token=5", "-q"])
    assert res.exit_code != 0 and "is computed on another probe" in res.output  # refused without --force
    res = CliRunner().invoke(app, ["compute", str(run), "--plugin", str(plugin), "--type", "attention_to_first",
                                   "--probe", "constant_tokens:batch=2,token=5", "--force", "-q"])
    assert res.exit_code == 0, res.output
    ds = store.open_scalars(run)
    var = ds["attention_to_first"]
    assert var.attrs["probe"] == "constant_tokens"
    # the probe the type saw, rebuilt: 2 sequences of token 5
    probe = scalars.engine.build_run_probe("constant_tokens:batch=2,token=5", run, info, config)
    np.testing.assert_array_equal(probe.arrays["tokens"], np.full((2, config.n_ctx), 5, np.int32))
    assert var.attrs["probe_hash"] == probe.content_hash
    step = int(ds.step[-1])
    model = scalars.load_model(run, step)
    _, cache = scalars.run_with_cache(model, probe.arrays["tokens"])  # TransformerLens names, by hand
    ref = np.stack([np.asarray(cache[f"blocks.{l}.attn.hook_pattern"])[:, :, -1, 0].mean(0)
                    for l in range(config.n_layers)])
    np.testing.assert_allclose(var.sel(step=step).values, ref, rtol=1e-5, atol=1e-6)


def test_probe_options_and_heads_are_checked_in_one_place(plugin, tiny_run):
    scalars.load_plugin(str(plugin))
    info, config = scalars.engine.load_run_model_config(tiny_run)
    with pytest.raises(ValueError, match=r"unknown constant_tokens probe option\(s\) \['T'\]; its options are: "
                                         r"batch, token"):
        scalars.engine.build_run_probe("constant_tokens:T=3", tiny_run, info, config)
    with pytest.raises(ValueError, match="batch=0 must be a positive number of sequences"):
        scalars.engine.build_run_probe("constant_tokens:batch=0", tiny_run, info, config)
    with pytest.raises(ValueError, match="probe 'regression' needs a regression model; this run's model is a "
                                         "token language model"):
        scalars.engine.build_run_probe("regression", tiny_run, info, config)
    with pytest.raises(ValueError, match="for this token language model use constant_tokens, repeated_tokens, "
                                         "induction_pair"):
        scalars.engine.build_run_probe("nosuch", tiny_run, info, config)
    with pytest.raises(ValueError, match="already registered"):
        scalars.register_probe("constant_tokens", description="again")(lambda run: None)


def test_scalars_probes_lists_builtin_and_plugin_probes(plugin):
    res = CliRunner().invoke(app, ["probes", "--plugin", str(plugin)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "repeated_tokens needs: lm options: batch=16, T=auto, seed=0" in text
    assert "constant_tokens needs: lm options: batch=4, token=3 every position the same token" in text
    assert "regression_pool needs: regression" in text and "icl_dynamics needs: classifier" in text


def test_the_icl_dynamics_probe_is_built_only_for_runs_of_that_sequence_format(tmp_path):
    """The probe set of the icl-dynamics paper exists for runs whose task samples its sequence
    format (their task offers it); for a bursty ICL run it is one sentence naming the format."""
    from scalars.engine import build_run_probe
    from trainer.config import resolve_config
    from trainer.tasks import build_task

    for preset, extra in (("icl-bursty", ["task.data.n_classes=64", "task.class_split=[48,0,16]"]),
                          ("icl-dynamics", ["task.data.n_classes=64", "task.class_split=[6,40,18]"])):
        config = resolve_config(preset, None, extra)
        model = build_task(config, load_data=False).model_config
        if preset == "icl-bursty":
            with pytest.raises(ValueError, match=r"probe 'icl_dynamics' needs a run whose task samples the "
                                                 r"icl-dynamics sequence format \(task.sequence_format=\"icl_dynamics\"\)"):
                build_run_probe("icl_dynamics", tmp_path, {"config": config}, model)
        else:  # every ordered pair of the 6 training classes x 8 label pairs x 2 orders x 2 query items
            probe = build_run_probe("icl_dynamics", tmp_path, {"config": config}, model)
            assert probe.arrays["examples"].shape[0] == 6 * 5 * 8 * 2 * 2
