"""Every mistake a user can make gets one clear sentence, a non-zero exit code, no traceback, no change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from tests._marks import slow_except

import scalars


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".lock")}


@pytest.fixture(scope="module")
def run_with_scalars(tiny_run, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("bad") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock-*"))
    scalars.compute(run, ["induction_score", "loss"])
    return run


def _setup(case: str, run: Path, tmp: Path) -> list[str]:
    """The argv of one bad-input case; files it needs are made under tmp."""
    r = str(run)
    if case == "wrong_rank_h5":
        with h5py.File(tmp / "bad.h5", "w") as f:
            f["resnet18/224/feat"] = np.zeros((10, 64), np.float32)
        return ["train", "--preset", "icl-bursty", "--set", "task.data.source=h5", "--set",
                f"task.data.path={tmp / 'bad.h5'}", "--out", str(tmp / "new")]
    if case == "plugin_raises_on_import":
        (tmp / "p.py").write_text("raise RuntimeError('plugin is broken')\n")
        return ["compute", r, "--plugin", str(tmp / "p.py"), "--type", "loss"]
    if case == "newer_schema":
        import shutil

        copy = tmp / "newer"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock-*"))
        info = json.loads((copy / "run.json").read_text())
        info["schema_version"] = 99
        (copy / "run.json").write_text(json.dumps(info))
        return ["compute", str(copy), "--type", "loss"]
    if case == "missing_config_file":
        return ["train", "--config", str(tmp / "nope.toml"), "--out", str(tmp / "new")]
    if case == "bad_config_file":
        (tmp / "c.json").write_text("{not json")
        return ["train", "--config", str(tmp / "c.json"), "--out", str(tmp / "new")]
    files = {  # cases that need a file made first
        "config_holds_a_list": ("list.json", b"[1, 2]"),
        "config_not_utf8": ("bad.toml", b"\xff\xfe\x00bad"),
        "probe_npz_not_a_zip": ("p.npz", b"not a zip"),
        "plugin_calls_exit": ("exit.py", b"import sys\nsys.exit(0)\n"),
        "out_under_a_file": ("afile", b""),
    }
    if case in files:
        name, data = files[case]
        (tmp / name).write_bytes(data)
    if case == "probe_npz_wrong_keys":
        np.savez(tmp / "w.npz", a=np.zeros(3))
    if case in ("probe_is_a_directory", "plot_out_is_a_directory", "config_is_a_directory"):
        (tmp / "adir").mkdir()
    if case == "run_json_disagrees_with_archive":
        import shutil

        copy = tmp / "edited"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock-*"))
        info = json.loads((copy / "run.json").read_text())
        info["model"]["d_model"] = 2 * info["model"]["d_model"]
        (copy / "run.json").write_text(json.dumps(info))
        before = snapshot(copy)
        _AFTER_CHECKS.append(lambda: snapshot(copy) == before)
        return ["compute", str(copy), "--type", "induction_score", "--force"]
    if case == "string_schema_version":
        import shutil

        copy = tmp / "strschema"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock-*"))
        info = json.loads((copy / "run.json").read_text())
        info["schema_version"] = "1"
        (copy / "run.json").write_text(json.dumps(info))
        return ["compute", str(copy), "--type", "loss"]
    train = ["train", "--preset", "induction-tiny", "--out", str(tmp / "new"), "--set"]
    return {
        "seed_too_large": [*train, "seeds.init_seed=1180591620717411303424"],
        "lr_nan": [*train, "train.lr=NaN"],
        "lr_inf": [*train, "train.lr=Infinity"],
        "grad_clip_negative": [*train, "train.grad_clip=-1"],
        "b1_above_one": [*train, "train.b1=1.5"],
        "too_many_steps": [*train, "train.steps=10000000000"],
        "batch_too_large_for_memory": [*train, "train.batch_size=200000"],
        "config_holds_a_list": ["train", "--config", str(tmp / "list.json"), "--out", str(tmp / "new")],
        "config_not_utf8": ["train", "--config", str(tmp / "bad.toml"), "--out", str(tmp / "new")],
        "config_is_a_directory": ["train", "--config", str(tmp / "adir"), "--out", str(tmp / "new")],
        "out_under_a_file": ["train", "--preset", "induction-tiny", "--out", str(tmp / "afile" / "new")],
        "steps_beyond_int64": ["compute", r, "--type", "loss", "--steps", "100000000000000000000"],
        "show_step_beyond_int64": ["show", r, "--type", "induction_score", "--step", "100000000000000000000"],
        "steps_per_task_zero": ["compute", r, r, "--type", "loss", "--steps-per-task", "0"],
        "show_top_negative": ["show", r, "--type", "induction_score", "--top", "-5"],
        "plot_out_is_a_directory": ["plot", r, "--type", "induction_score", "-o", str(tmp / "adir")],
        "plot_out_in_missing_folder": ["plot", r, "--type", "induction_score", "-o", str(tmp / "no" / "x.png")],
        "plugin_calls_exit": ["compute", r, "--plugin", str(tmp / "exit.py"), "--type", "loss"],
        "unknown_probe_name": ["compute", r, "--type", "induction_score", "--probe", "nosuchprobe", "--force"],
        "probe_is_a_directory": ["compute", r, "--type", "induction_score", "--probe", str(tmp / "adir"), "--force"],
        "probe_npz_not_a_zip": ["compute", r, "--type", "induction_score", "--probe", str(tmp / "p.npz"), "--force"],
        "probe_npz_wrong_keys": ["compute", r, "--type", "induction_score", "--probe", str(tmp / "w.npz"), "--force"],
        "unknown_preset": ["train", "--preset", "gpt5", "--out", str(tmp / "new")],
        "unknown_key": ["train", "--set", "model.n_layer=3", "--out", str(tmp / "new")],
        "wrong_value_type": ["train", "--set", "train.lr=fast", "--out", str(tmp / "new")],
        "set_without_equals": ["train", "--set", "train.steps", "--out", str(tmp / "new")],
        "bad_schedule": ["train", "--set", "checkpoints.schedule=sometimes", "--out", str(tmp / "new")],
        "out_holds_a_run": ["train", "--preset", "induction-tiny", "--out", r],
        "resume_not_a_run": ["train", "--resume", str(tmp)],
        "from_step_without_resume": ["train", "--from-step", "3", "--out", str(tmp / "new")],
        "unknown_type": ["compute", r, "--type", "induction_scor"],
        "bad_steps_spec": ["compute", r, "--type", "loss", "--steps", "10..x"],
        "step_not_in_archive": ["compute", r, "--type", "loss", "--steps", "35"],
        "not_a_run_dir": ["compute", str(tmp), "--type", "loss"],
        "glob_matches_nothing": ["compute", str(tmp / "nothing*"), "--type", "loss"],
        "type_for_other_head": ["compute", r, "--type", "iwl_accuracy"],
        "missing_probe_file": ["compute", r, "--type", "induction_score", "--probe", str(tmp / "p.npy"), "--force"],
        "show_unknown_type": ["show", r, "--type", "ablated_loss"],
        "show_unknown_step": ["show", r, "--type", "induction_score", "--step", "33"],
        "plot_unknown_type": ["plot", r, "--type", "nope", "-o", str(tmp / "x.png")],
        "verify_not_a_run": ["verify", str(tmp)],
        "probe_too_large_for_memory": ["compute", r, "--type", "induction_score", "--probe",
                                       "repeated_tokens:batch=1000000", "--force"],
        "probe_too_large_to_build": ["compute", r, "--type", "induction_score", "--probe",
                                     "repeated_tokens:batch=1000000000000", "--force"],
        "block_size_zero": ["compute", r, "--type", "loss", "--block-size", "0", "--force"],
        "workers_zero": ["compute", r, "--type", "loss", "--workers", "0", "--force"],
        "workers_with_scheduler": ["compute", r, "--type", "loss", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
        "type_and_all": ["compute", r, "--type", "loss", "--all"],
        "option_without_value": ["compute", r, "--type", "loss", "--option", "loss.x"],
        "option_unknown_key": ["compute", r, "--type", "ablated_loss", "--option", "ablated_loss.nosuch=1"],
        "option_for_unrequested_type": ["compute", r, "--type", "loss", "--option", "ablated_loss.ablation=zero"],
        "option_bad_value": ["compute", r, "--type", "ablated_loss", "--option", "ablated_loss.ablation=bogus"],
        "export_step_not_in_archive": ["export", r, "--step", "33", "--format", "hf", "-o", str(tmp / "e")],
        "export_unknown_format": ["export", r, "--step", "30", "--format", "nope", "-o", str(tmp / "e")],
        "export_scalars_unknown_format": ["export-scalars", r, "--format", "nope", "-o", str(tmp / "x.csv")],
        "patterns_step_not_stored": ["patterns", r, "--step", "33", "-o", str(tmp / "p")],
        "patterns_layer_out_of_range": ["patterns", r, "--step", "30", "--layer", "9", "-o", str(tmp / "p")],
        "plot_head_out_of_range": ["plot", r, "--type", "induction_score", "--head", "9.9", "-o", str(tmp / "h.png")],
        "show_bad_steps_spec": ["show", r, "--type", "induction_score", "--steps", "10..x"],
        "import_unknown_format": ["import", "--from", "nope", str(tmp), "--out", str(tmp / "imp")],
        "import_missing_folder": ["import", "--from", "hf", str(tmp / "nothing"), "--out", str(tmp / "imp")],
        "sweep_bad_range": ["train", "--sweep", "seed=a..b", "--out", str(tmp / "sw")],
        "sweep_unknown_key": ["train", "--sweep", "nokey=1,2", "--out", str(tmp / "sw")],
        "zero_train_steps": [*train, "train.steps=0"],
        "heads_do_not_divide_width": [*train, "model.n_heads=3"],
    }[case]


CASES = {
    "unknown_preset": "unknown preset 'gpt5'",
    "unknown_key": "unknown config key 'model.n_layer' (did you mean 'n_layers'",
    "wrong_value_type": "config key 'train.lr' expects a float",
    "set_without_equals": "--set expects key=value",
    "bad_schedule": "unknown checkpoint schedule kind 'sometimes'",
    "missing_config_file": "does not exist",
    "bad_config_file": "is not valid JSON",
    "out_holds_a_run": "already holds a run",
    "resume_not_a_run": "is not a run directory",
    "from_step_without_resume": "--from-step only applies with --resume",
    "wrong_rank_h5": "(10, 64)",
    "unknown_type": "did you mean",
    "bad_steps_spec": "bad --steps spec",
    "step_not_in_archive": "step 35 is not a committed checkpoint of this run; nearest: 30, 40",
    "not_a_run_dir": "not run directories",
    "glob_matches_nothing": "no run directories match",
    "type_for_other_head": "needs a sequence classifier",
    "missing_probe_file": "does not exist",
    "newer_schema": "newer version",
    "plugin_raises_on_import": "plugin is broken",
    "show_unknown_type": "scalar 'ablated_loss' is not stored",
    "show_unknown_step": "step 33 is not stored",
    "plot_unknown_type": "scalar 'nope' is not stored",
    "verify_not_a_run": "is not a run directory",
    "seed_too_large": "seeds.init_seed must be an integer in [0, 2**32)",
    "lr_nan": "train.lr must be a finite positive number, got nan",
    "lr_inf": "train.lr must be a finite positive number, got inf",
    "grad_clip_negative": "train.grad_clip must be a positive norm",
    "b1_above_one": "train.b1 must be in [0, 1)",
    "too_many_steps": "is more than this tool can schedule",
    "batch_too_large_for_memory": "GiB for one step, more than the",
    "config_holds_a_list": "holds a list, not a table of sections",
    "config_not_utf8": "is not UTF-8 text",
    "config_is_a_directory": "is a directory; pass a .json or .toml file",
    "out_under_a_file": "is a file, not a folder",
    "steps_beyond_int64": "is larger than any step a run can hold",
    "show_step_beyond_int64": "is not stored; nearest stored steps: 60",
    "steps_per_task_zero": "--steps-per-task must be at least 1, got 0",
    "show_top_negative": "--top must be at least 1, got -5",
    "plot_out_is_a_directory": "is a directory; pass a file name",
    "plot_out_in_missing_folder": "does not exist; create",
    "plugin_calls_exit": "called sys.exit(0) while being imported",
    "unknown_probe_name": "probe 'nosuchprobe' is not a probe name this run knows",
    "probe_is_a_directory": "is a directory, not a probe file",
    "probe_npz_not_a_zip": "is not a numpy .npz archive",
    "probe_npz_wrong_keys": "holds arrays ['a']; a probe .npz holds tokens",
    "string_schema_version": "has schema_version '1', not an integer",
    "run_json_disagrees_with_archive": "does not match its checkpoint archive: parameter",
    "probe_too_large_for_memory": "(1000000 sequences) needs about",
    "probe_too_large_to_build": "is too large to build in this machine's memory",
    "block_size_zero": "--block-size must be at least 1, got 0",
    "workers_zero": "--workers must be at least 1, got 0",
    "workers_with_scheduler": "with --scheduler the cluster's own workers are used, so drop --workers",
    "type_and_all": "pass either --type NAME ... or --all, not both",
    "option_without_value": "--option expects TYPE.KEY=VALUE, got 'loss.x'",
    "option_unknown_key": "type 'ablated_loss' has no option(s) nosuch; its options are",
    "option_for_unrequested_type": "options given for type(s) ablated_loss that are not requested",
    "option_bad_value": "option ablation must be one of zero, mean, mean_per_position, got 'bogus'",
    "export_step_not_in_archive": "step 33 is not a committed checkpoint of this run; nearest: 30, 40",
    "export_unknown_format": "--format 'nope' is not supported; use --format hf",
    "export_scalars_unknown_format": "format 'nope' is not supported; use one of",
    "patterns_step_not_stored": "step 33 is not a checkpoint in",
    "patterns_layer_out_of_range": "layer 9 is out of range: this run has layers 0-1",
    "plot_head_out_of_range": "--head 9.9 is not a head of 'induction_score'",
    "show_bad_steps_spec": "bad --steps spec '10..x'",
    "import_unknown_format": "--from 'nope' is not a known format; use one of",
    "import_missing_folder": "does not exist; pass Hugging Face checkpoint directories",
    "sweep_bad_range": "a range is two integers A..B",
    "sweep_unknown_key": "--sweep key 'nokey' is neither a short name",
    "zero_train_steps": "train.steps must be a positive integer, got 0",
    "heads_do_not_divide_width": "must be divisible by model.n_heads (3)",
}
_AFTER_CHECKS: list = []  # extra "nothing changed" checks a case's setup registers


@pytest.mark.parametrize("case", slow_except(sorted(CASES), [  # one case of each command and kind of mistake
    "unknown_key", "bad_config_file", "type_for_other_head", "probe_npz_wrong_keys", "plugin_raises_on_import",
    "run_json_disagrees_with_archive", "plot_head_out_of_range", "import_missing_folder"]))
def test_bad_input(case, run_with_scalars, tmp_path):
    argv = _setup(case, run_with_scalars, tmp_path)
    before = snapshot(run_with_scalars)
    res = subprocess.run([sys.executable, "-m", "cli.app", *argv], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "400"})
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert CASES[case] in lines[0], lines[0]
    assert snapshot(run_with_scalars) == before, "a failed command changed the run"
    while _AFTER_CHECKS:
        assert _AFTER_CHECKS.pop()(), "a failed command changed the run it was given"
    assert not (tmp_path / "new").exists()
