"""A checkpoint series from a Hugging Face cache directory built here in huggingface_hub's layout
(refs/<revision> -> commit, snapshots/<commit>/...): the same run as the folder-of-folders import."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import store
from cli.app import app
from trainer.interop.hf import cache as hf_cache
from tests._paths import FIXTURES

FIXTURE = FIXTURES / "hf" / "gpt2"
REPO = "someorg/tiny-gpt2"
STEPS = (0, 1000, 2000)
runner = CliRunner()


def _checkpoint(dst: Path, step: int) -> None:
    """The gpt2 fixture with every tensor shifted by step / 1e4 (distinct checkpoints)."""
    dst.mkdir(parents=True)
    shutil.copy(FIXTURE / "config.json", dst / "config.json")
    tensors = {k: (v + np.float32(step / 1e4)).astype(v.dtype) for k, v in load_file(FIXTURE / "model.safetensors").items()}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def series(tmp_path, monkeypatch):
    """(cache root, folder of checkpoint folders) holding the same three checkpoints, plus a `main` ref."""
    cache, folders = tmp_path / "cache", tmp_path / "folders"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    for step in STEPS:
        commit = hashlib.sha1(f"step{step}".encode()).hexdigest()
        _checkpoint(repo / "snapshots" / commit, step)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
        shutil.copytree(repo / "snapshots" / commit, folders / f"step{step}")
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_cache, "cache_root", lambda: cache)
    return cache, folders


def test_cached_revisions_import_as_the_folder_series_does(series, tmp_path):
    _, folders = series
    res = runner.invoke(app, ["import", "--from", "hf", REPO, "--revisions", "step*", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["import", "--from", "hf", str(folders), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = store.open_archive(tmp_path / "a"), store.open_archive(tmp_path / "b")
    assert a.steps.tolist() == b.steps.tolist() == list(STEPS)
    for step in STEPS:
        la, lb = a.load(step), b.load(step)
        assert la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)
    info = store.read_run_json(tmp_path / "a")
    assert info["hf_source"] == {"repo_id": REPO, "revisions": [f"step{s}" for s in STEPS]}
    res = runner.invoke(app, ["import", "--from", "hf", REPO, "--revisions", "step1000,step2000", "--out",
                              str(tmp_path / "c")])
    assert res.exit_code == 0 and store.open_archive(tmp_path / "c").steps.tolist() == [1000, 2000], res.output


@pytest.mark.parametrize("argv,message", [
    ([REPO, "--revisions", "iter*"], "no cached revision of 'someorg/tiny-gpt2' matches iter* (cached: main, step0"),
    (["other/repo", "--revisions", "step*"], "'other/repo' is not in the Hugging Face cache at"),
    ([REPO, "--revisions", "*"], "revision 'main' of 'someorg/tiny-gpt2' names no step"),
    ([REPO], "is not a folder here; to import that repo from the Hugging Face cache pass --revisions"),
])
def test_bad_revision_requests_are_one_sentence_and_write_nothing(series, tmp_path, argv, message):
    out = tmp_path / "out"
    res = runner.invoke(app, ["import", "--from", "hf", *argv, "--out", str(out)])
    assert res.exit_code != 0 and message in " ".join(res.output.split()), res.output
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_download_offline_is_one_sentence(tmp_path):
    """--download with the hub unreachable (HF_HUB_OFFLINE): one line, exit != 0, nothing written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "cli.app", "import", "--from", "hf", REPO, "--revisions", "step*",
                          "--download", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "cannot list the revisions of 'someorg/tiny-gpt2' on the Hugging Face hub" in lines[0]
    assert not (tmp_path / "out").exists()
