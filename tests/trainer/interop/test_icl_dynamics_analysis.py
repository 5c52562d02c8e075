"""The paper's analyses end to end on the icl-dynamics fixtures: `scalars import --from icl-dynamics`, then
`scalars compute` over every checkpoint, a native icl-bursty run beside it, and bad input through the CLI."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import scalars
import store
from cli._compute import compute_command
from cli._import import import_command
from trainer.interop.icl_dynamics import read_log_h5
from trainer.tasks import synthetic_clusters
from tests._paths import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "icl-dynamics"
MAIN, MLP = FIXTURES / "omniglot50_rl5_synthetic", FIXTURES / "omniglot50_rl5_synthetic_mlp"
EXEMPLAR0 = FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy"
MAIN_STEPS = [0, 24000, 32000, 40000, 100000]
PAPER_TYPES = ["induction_strength", "prev_token_score", "prev_token_score_corrected", "composition_q",
               "composition_k", "composition_v", "loss", "accuracy", "layer_removal_loss", "prev_token_clamp_loss",
               "induction_clamp_loss"]
STRIDE_PROBE = "icl_dynamics:stride=16"  # 4,900 of the 78,400 sequences: every label pair, class pair block, side
BURSTY_OVERRIDES = ["train.steps=40", "model.d_model=32", "train.batch_size=16", "train.eval_every=20",
                    "train.eval_size=32", "checkpoints.schedule=every:20", "task.data.n_classes=256",
                    "task.class_split=[192,0,64]"]
runner = CliRunner()


def cli() -> typer.Typer:
    """The `import` and `compute` commands as `scalars` registers them."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """scalars"""

    app.command("import")(import_command)
    app.command("compute")(compute_command)
    return app


def invoke(*args) -> "typer.testing.Result":
    return runner.invoke(cli(), [str(a) for a in args])


def types_args(types):
    return [a for t in types for a in ("--type", t)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """MAIN imported through the CLI (the synthetic stand-in regenerated) and computed over all 5 checkpoints on the strided paper probe."""
    out = tmp_path_factory.mktemp("imported") / "main"
    r = invoke("import", "--from", "icl-dynamics", MAIN, "--out", out, "--data", "synthetic")
    assert r.exit_code == 0, r.output
    assert "5 checkpoints at [0, 24000, 32000, 40000, 100000] training sequences" in r.output
    r = invoke("compute", out, "-q", "--probe", STRIDE_PROBE, *types_args(PAPER_TYPES))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def native_bursty(tmp_path_factory):
    """A tiny run of this project's own bursty ICL preset, computed with the same types (default probe: icl)."""
    from trainer.config import resolve_config
    from trainer.train import train

    out = tmp_path_factory.mktemp("native") / "bursty"
    train(resolve_config("icl-bursty", None, BURSTY_OVERRIDES), out)
    r = invoke("compute", out, "-q", *types_args(PAPER_TYPES))
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
def test_imported_run_is_self_sufficient(imported):
    info = store.read_run_json(imported)
    np.testing.assert_array_equal(np.load(imported / "probes" / "icl_dynamics_exemplar0.npy"), np.load(EXEMPLAR0))
    assert info["steps"] == MAIN_STEPS and info["optimizer_steps"] == [s // 32 for s in MAIN_STEPS]
    assert store.open_archive(imported).steps.tolist() == MAIN_STEPS
    ds = store.open_scalars(imported)
    assert ds.induction_strength.attrs["probe"] == STRIDE_PROBE
    for name in PAPER_TYPES:  # every cell of every type computed, and nothing left to do
        assert store.missing_steps(imported, name, MAIN_STEPS).size == 0, name
    r = invoke("compute", imported, "-q", "--probe", STRIDE_PROBE, *types_args(PAPER_TYPES))
    assert r.exit_code == 0 and "0 cells computed" in r.output, r.output


@pytest.mark.slow
def test_paper_analyses_over_every_checkpoint(imported):
    ds = store.open_scalars(imported).load()
    assert ds.step.values.tolist() == MAIN_STEPS
    acc = ds.accuracy.values
    assert acc[0] < 0.5 and acc[-1] > 0.98 and np.all(np.diff(acc) > 0), acc  # rises to ~1
    strength = ds.induction_strength.sel(layer=1).values  # (step, head)
    rise = strength[-1] - strength[0]
    top = int(rise.argmax())
    assert rise[top] > 0.5 and np.all(np.diff(strength[:, top]) > 0), strength[:, top]
    assert np.abs(ds.induction_strength.sel(layer=0).values).max() < 0.05  # no induction in layer 0
    # previous-token heads of layer 0: chance-corrected score rises steadily in some heads, near 0 at init
    corrected = ds.prev_token_score_corrected.sel(layer=0).values
    prev_heads = np.flatnonzero(corrected[-1] > 0.3)
    assert len(prev_heads) >= 1 and np.abs(corrected[0]).max() < 0.15, corrected
    for h in prev_heads:
        assert np.all(np.diff(corrected[:, h]) > 0) and corrected[-1, h] - corrected[0, h] > 0.3, corrected[:, h]
    # the induction head's K-composition with the previous-token heads grows (full circuits)
    comp_k = ds.composition_k.sel(layer=1, head=top, src_layer=0).values  # (step, src_head)
    assert comp_k[-1, prev_heads].mean() > comp_k[0, prev_heads].mean()
    assert np.isnan(ds.composition_k.sel(layer=0).values).all()  # no earlier layer to compose with
    # progress measure: the induction head given a perfect match copies the label (its OV path forms)
    clamp = ds.induction_clamp_loss.sel(layer=1, head=top).values
    assert clamp[0] > 1.5 and clamp[-1] < 0.2, clamp
    assert np.all(ds.prev_token_clamp_loss.sel(layer=0).values[-1] < 0.1)  # the trained circuit reads a prev token
    assert ds.layer_removal_loss.sel(layer=1).values[-1] > 10 * ds.loss.values[-1]  # layer 1 is needed


@pytest.mark.slow
def test_imported_training_loss_equals_log_h5(imported):
    log = read_log_h5(MAIN / "log.h5")
    metrics = store.open_metrics(imported).sel(step=log["train"]["step"])
    np.testing.assert_array_equal(metrics["train_loss"].values, log["train"]["train_loss"])
    np.testing.assert_array_equal(metrics["optimizer_step"].values, log["train"]["step"] / 32)


@pytest.mark.slow
def test_evaluators_regenerated_from_config(imported):
    """fsl_* probes from the run's config (--data synthetic: the whole stand-in): the final model scores on
    them what log.h5 recorded for its own (differently sampled) evaluator sequences at 100000 sequences."""
    import equinox as eqx

    from trainer.interop.icl_dynamics import load_icl_dynamics_model, read_icl_dynamics_config

    info, config = scalars.engine.load_run_model_config(imported)
    _, model = load_icl_dynamics_model(MAIN / "checkpoints" / "00000100000.eqx", read_icl_dynamics_config(MAIN))
    log = read_log_h5(MAIN / "log.h5")["eval"]

    @eqx.filter_jit
    def accuracy(model, examples, labels):
        logits = jax.vmap(lambda e, l: model({"examples": e, "labels": l}))(examples, labels)
        return (logits[:, -1].argmax(-1) == labels[:, -1]).mean()

    probes = {}
    for name in ("fsl_train", "fsl_val_rl", "fsl_train_valex", "fsl_test_class"):
        probes[name] = probe = scalars.engine.build_run_probe(f"{name}:batch=256", imported, info, config)
        assert probe.batch_size == 256 and probe.arrays["examples"].shape[1:] == (3, 512)
        acc = float(accuracy(model, probe.arrays["examples"], probe.arrays["labels"]))
        assert abs(acc - log[f"eval_{name}_accuracy"][-1]) < 0.06, (name, acc, log[f"eval_{name}_accuracy"][-1])
    pairs = {tuple(sorted(p)) for p in probes["fsl_val_rl"].arrays["labels"][:, :2].tolist()}
    assert pairs == {(2, 3), (3, 4)}  # the validation label pairs
    classes = np.asarray(probes["fsl_test_class"].arrays["examples"])[:, 0]
    test_block = synthetic_clusters(0, 1623, 5, 512, 0.1)[1523:, 0]  # exemplar 0 of the 100 test classes
    assert np.isin(classes[:, 0], test_block[:, 0]).all()


@pytest.mark.slow
def test_imported_and_native_runs_open_together(imported, native_bursty):
    ds = store.open_scalars([imported, native_bursty])
    assert ds.sizes["run"] == 2 and ds.run.values.tolist() == ["main", "bursty"]
    assert ds["model.n_heads"].values.tolist() == [8, 4] and ds["model.d_model"].values.tolist() == [64, 32]
    assert ds["step_unit"].values[0] == "sequences"  # imported steps count training sequences
    native = ds.sel(run="bursty").dropna("step", how="all", subset=["loss"])
    assert native.step.values.tolist() == [0, 20, 40]
    strength = native.induction_strength.values  # (step, layer, head): heads 4..7 do not exist there
    assert np.isfinite(strength[:, :, :4]).all() and np.isnan(strength[:, :, 4:]).all()
    for name in PAPER_TYPES:
        assert np.isfinite(native[name].isel(head=slice(0, 4)) if "head" in native[name].dims
                           else native[name]).sum() > 0, name
    native_alone = store.open_scalars(native_bursty)
    assert native_alone.induction_strength.attrs["probe"] == "icl"  # this project's own eval set, no correct_index


def test_mlp_run_imports_and_computes(tmp_path):
    out = tmp_path / "mlp"
    r = invoke("import", "--from", "icl-dynamics", MLP, "--out", out, "--exemplars", EXEMPLAR0)
    assert r.exit_code == 0, r.output
    assert "probe vectors from npy file" in r.output
    r = invoke("compute", out, "-q", "--probe", "icl_dynamics:stride=64", "--type", "accuracy", "--type",
               "induction_clamp_loss")
    assert r.exit_code == 0, r.output
    ds = store.open_scalars(out)
    assert ds.step.values.tolist() == [0, 32000, 60000] and ds.induction_clamp_loss.shape == (3, 2, 4)
    assert ds.accuracy.values[-1] > ds.accuracy.values[0]


# ------------------------------------------------------------------------------------ bad input


def assert_refused(result, pattern_parts, out: Path):
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for part in pattern_parts:
        assert part in text, (part, text)
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_bad_input_is_one_clear_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    not_run = tmp_path / "not_a_run"
    not_run.mkdir()
    (not_run / "notes.txt").write_text("x")
    assert_refused(invoke("import", "--from", "icl-dynamics", not_run, "--out", out),
                   ["is not an icl-dynamics run folder: it has no config.json and checkpoints/"], out)
    # the config names a data file that is absent: say which flags supply it
    assert_refused(invoke("import", "--from", "icl-dynamics", MAIN, "--out", out),
                   ["names data file 'synthetic_omniglot_features.h5', which was not found",
                    "--data FILE.h5", "--exemplars FILE.npy", "--data synthetic"], out)
    assert_refused(invoke("import", "--from", "icl-dynamics", MAIN, "--out", out, "--data", tmp_path / "nope.h5"),
                   ["nope.h5 does not exist", "--data FILE.h5"], out)
    bad_npy = tmp_path / "bad.npy"
    np.save(bad_npy, np.zeros((49, 512), np.float32))
    assert_refused(invoke("import", "--from", "icl-dynamics", MAIN, "--out", out, "--exemplars", bad_npy),
                   ["holds float32 (49, 512) but the run needs exemplar 0 of its 50 training classes"], out)
    assert_refused(invoke("import", "--from", "icl-dynamics", MAIN, "--out", out, "--data", "synthetic",
                          "--exemplars", EXEMPLAR0), ["pass either --data or --exemplars, not both"], out)
    assert_refused(invoke("import", "--from", "pytorch", MAIN, "--out", out),
                   ["--from 'pytorch' is not a known format; use one of hf, icl-dynamics"], out)
    assert_refused(invoke("import", "--from", "icl-dynamics", MAIN, "--out", out, "--steps", "1"),
                   ["--steps applies to --from hf only"], out)


def test_cli_mismatched_checkpoint_shapes_refused(tmp_path):
    """A config whose d_model disagrees with the checkpoints, and a checkpoint of the other run mixed in."""
    run = tmp_path / "run"
    shutil.copytree(MAIN, run)
    for p in run.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "d_model": 32}))
    out = tmp_path / "out"
    assert_refused(invoke("import", "--from", "icl-dynamics", run, "--out", out, "--data", "synthetic"),
                   ["00000000000.eqx record 1 (model.embed_dim) holds 64 but the config implies 32"], out)
    (run / "config.json").write_text(json.dumps(config))
    shutil.copy(MLP / "checkpoints" / "00000032000.eqx", run / "checkpoints" / "00000032000.eqx")
    assert_refused(invoke("import", "--from", "icl-dynamics", run, "--out", out, "--data", "synthetic"),
                   ["00000032000.eqx record 1 (model.embed_dim) holds 32 but the config implies 64"], out)
    raw = (MAIN / "checkpoints" / "00000040000.eqx").read_bytes()
    (run / "checkpoints" / "00000032000.eqx").write_bytes(raw[:400000])  # truncated, and named for another step
    assert_refused(invoke("import", "--from", "icl-dynamics", run, "--out", out, "--data", "synthetic"),
                   ["00000032000.eqx record", "is truncated"], out)


@pytest.mark.slow
@pytest.mark.big_memory
def test_full_paper_probe_over_every_checkpoint(imported, tmp_path):
    """The whole 78,400-sequence probe (one batch, about 2.5 GB peak on CPU) agrees with the strided one."""
    full = tmp_path / "full"
    shutil.copytree(imported, full)
    shutil.rmtree(full / "scalars.zarr")
    types = ["induction_strength", "prev_token_score_corrected", "accuracy", "loss"]
    r = invoke("compute", full, "-q", *types_args(types))
    assert r.exit_code == 0, r.output
    ds, strided = store.open_scalars(full).load(), store.open_scalars(imported).load()
    assert ds.induction_strength.attrs["probe"] == "icl_dynamics"
    assert ds.accuracy.values[-1] > 0.99
    for name in types:
        np.testing.assert_allclose(ds[name].values, strided[name].values, atol=0.03, err_msg=name)
