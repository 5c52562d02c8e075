"""A Hugging Face checkpoint series read in place: the run references the source safetensors files
(size and header checksum in checkpoints.ref.json), reads exactly what a copied import stores, names a
file that changed or vanished with its step (verify, compute), and `--copy` / `--step-pattern` work."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import scalars
import store
import store.references
from cli.app import app
from trainer.interop.hf.importer import import_hf

from tests._hf_series import make_series

TYPES = ["prev_token_score", "ablated_loss", "loss"]
runner = CliRunner()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_in_place_import_references_the_files_and_computes_what_a_copy_computes(tmp_path):
    series = make_series(tmp_path / "series")
    ref, dense = import_hf([series], tmp_path / "ref"), import_hf([series], tmp_path / "dense", copy=True)
    assert (ref / "checkpoints.ref.json").is_file() and not (ref / "checkpoints.zarr").exists()
    assert (dense / "checkpoints.zarr").is_dir() and not (dense / "checkpoints.ref.json").exists()
    assert du(ref) < du(series) / 4  # nothing copied: the run is its run.json and a manifest
    manifest = json.loads((ref / "checkpoints.ref.json").read_text())
    entry = manifest["checkpoints"][1]
    assert entry["step"] == 10 and entry["files"][0]["path"] == str((series / "step10" / "model.safetensors").resolve())
    assert entry["files"][0]["size"] == os.path.getsize(series / "step10" / "model.safetensors")
    assert store.read_run_json(ref)["checkpoints"] == "referenced in place"
    a, b = store.open_archive(ref), store.open_archive(dense)
    assert isinstance(a, store.ReferencedArchive) and a.leaf_specs == b.leaf_specs
    assert list(a.steps) == list(b.steps) == [0, 10, 20]
    block_a, block_b = a.load_block([10, 20]), b.load_block([10, 20])
    assert all(np.array_equal(block_a[k], block_b[k]) for k in block_b)
    lazy = a.to_xarray()
    name = a.leaf_names[0]
    assert np.array_equal(lazy[name].sel(step=20).values, b.load(20)[name])
    for run in (ref, dense):
        report = scalars.compute(run, types=TYPES, block_size=2)[0]
        assert not report.failed_steps
    x, y = store.open_scalars(ref), store.open_scalars(dense)
    for t in TYPES:
        assert np.array_equal(x[t].values, y[t].values), t
    assert not store.verify_archive(ref)


def test_sharded_checkpoints_are_referenced_file_by_file(tmp_path):
    whole = make_series(tmp_path / "whole", steps=(3,))
    d = tmp_path / "sharded" / "checkpoint-3"
    d.mkdir(parents=True)
    shutil.copy(whole / "step3" / "config.json", d / "config.json")
    tensors = load_file(whole / "step3" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, d / file, metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    run = import_hf([d], tmp_path / "run")
    files = json.loads((run / "checkpoints.ref.json").read_text())["checkpoints"][0]["files"]
    assert [Path(f["path"]).name for f in files] == sorted(shards)
    want = import_hf([whole], tmp_path / "want", copy=True)
    got, ref = store.open_archive(run).load(3), store.open_archive(want).load(3)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002.safetensors', named in '.*index.json', does "
                                                r"not exist; copy the complete checkpoint directory"):
        import_hf([d], tmp_path / "again")  # a missing shard at import: nothing written
    assert not (tmp_path / "again").exists()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["import", "--from", "hf", str(tmp_path / "empty"), "--out", str(tmp_path / "again")])
    assert r.exit_code == 2 and "has no config.json; pass Hugging Face checkpoint directories" in r.output
    assert not (tmp_path / "again").exists()
    (problem,) = store.verify_archive(run)
    assert problem.startswith("checkpoint at step 3: its file ") and "model-00002-of-00002.safetensors' has vanished" in problem


def test_changed_or_vanished_files_are_named_with_their_step_and_other_steps_still_compute(tmp_path):
    series = make_series(tmp_path / "series")
    run = tmp_path / "run"
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "referenced in place" in r.output
    r = runner.invoke(app, ["verify", str(run)])
    assert r.exit_code == 0 and "ok:" in r.output, r.output
    f10, f20 = series / "step10" / "model.safetensors", series / "step20" / "model.safetensors"
    with open(f10, "r+b") as f:  # one byte of the header changed, same size
        head = bytearray(f.read(64))
        at = head.index(b"{") + 2
        f.seek(at)
        f.write(bytes([head[at] ^ 1]))
    os.remove(f20)
    r = runner.invoke(app, ["verify", str(run)])
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert f"checkpoint at step 10: its file '{f10.resolve()}' changed since the import (its header checksum differs)" in text
    assert f"checkpoint at step 20: its file '{f20.resolve()}' has vanished" in text
    r = runner.invoke(app, ["compute", str(run), "-q", "--type", "loss"])
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    assert "step 10: its file" in text and "step 20: its file" in text and "Traceback" not in r.output
    ds = store.open_scalars(run)
    assert np.isfinite(ds["loss"].sel(step=0).values)  # the intact step is computed
    computed = store.stored_steps(run)[store.computed_mask(run, "loss")]
    assert computed.tolist() == [0]
    with open(f10, "ab") as f:  # a size change is named with the sizes
        f.write(b"\0")
    (first,) = [p for p in store.verify_archive(run) if "step 10" in p]
    assert "changed since the import (size " in first


def test_cli_copy_stores_the_series_so_the_source_can_go(tmp_path):
    series = make_series(tmp_path / "series", steps=(0, 5))
    run = tmp_path / "run"
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(run), "--copy"])
    assert r.exit_code == 0 and "copied into" in r.output, r.output
    want = store.open_archive(run).load(5)
    shutil.rmtree(series)
    r = runner.invoke(app, ["verify", str(run)])
    assert r.exit_code == 0, r.output
    assert all(np.array_equal(v, want[k]) for k, v in store.open_archive(run).load(5).items())


def test_step_pattern_reads_steps_from_names_with_several_integers(tmp_path):
    series = make_series(tmp_path / "series", steps=(100, 200), dirname="run2_iter_{}_final")
    out = tmp_path / "run"
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(out)])
    assert r.exit_code == 2 and "cannot tell the step of" in r.output and not out.exists()
    for pattern, message in [(r"iter_\d+", "has 0 groups; it needs exactly one"),
                             (r"iter_(\d+", "is not a regular expression"),
                             (r"step_(\d+)", "does not match --step-pattern")]:
        r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(out), "--step-pattern", pattern])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (pattern, r.output)
        assert "Traceback" not in r.output and not out.exists()
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(out), "--step-pattern", r"iter_(\d+)"])
    assert r.exit_code == 0, r.output
    assert store.read_run_json(out)["steps"] == [100, 200]


def test_a_decoder_nobody_registered_is_one_sentence(tmp_path, monkeypatch):
    run = import_hf([make_series(tmp_path / "series", steps=(0,))], tmp_path / "run")
    monkeypatch.setattr(store.references, "_DECODERS", {})
    with pytest.raises(store.StoreError, match=r"needs the checkpoint decoder 'hf', which no imported package "
                                               r"registered; import the package that wrote this run"):
        store.open_archive(run).load(0)


class _TorchTensor:
    """What the importer uses of a torch tensor."""

    def __init__(self, a):
        self._a, self.dtype = a, a.dtype

    def numpy(self):
        return self._a


def _fake_torch():
    """A stand-in for torch whose `load` reads the .npz the test saved as pytorch_model.bin."""
    import types

    torch = types.ModuleType("torch")
    torch.bfloat16 = object()
    torch.load = lambda path, map_location, weights_only: (
        {k: _TorchTensor(v) for k, v in np.load(path).items()} if weights_only and map_location == "cpu" else None)
    return torch


def test_pickle_checkpoints_load_with_torch_and_are_refused_without(tmp_path, monkeypatch):
    import trainer.interop._files

    series = make_series(tmp_path / "series", steps=(0, 10))
    for d in series.iterdir():
        tensors = load_file(d / "model.safetensors")
        with open(d / "pytorch_model.bin", "wb") as f:
            np.savez(f, **tensors)
        os.remove(d / "model.safetensors")
    monkeypatch.setattr(trainer.interop._files, "_torch", lambda: None)
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert ("has only pytorch_model.bin (a pickle, which needs torch to load, and torch is not installed); install "
            "torch (the [bench] extra) or convert it to safetensors") in " ".join(r.output.split())
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(trainer.interop._files, "_torch", _fake_torch)
    r = runner.invoke(app, ["import", "--from", "hf", str(series), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0 and "copied (torch pickles converted) into" in r.output, r.output
    assert (tmp_path / "run" / "checkpoints.zarr").is_dir()  # stored: a pickle has no header to check per read
    want = import_hf([make_series(tmp_path / "st", steps=(0, 10))], tmp_path / "want")
    for step in (0, 10):
        got, ref = store.open_archive(tmp_path / "run").load(step), store.open_archive(want).load(step)
        assert all(np.array_equal(got[k], ref[k]) for k in ref)
