"""examples/one-checkpoint.ipynb, executed with nbclient on the trained induction-tiny run."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient

import scalars
import store
from trainer.model import ModelConfig, next_token_losses
from tests._paths import ROOT

NOTEBOOK = ROOT / "examples" / "one-checkpoint.ipynb"


@pytest.mark.slow
def test_one_checkpoint_notebook_ablates_the_induction_head(trained_induction_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ONE_CHECKPOINT_RUN", str(trained_induction_tiny))
    monkeypatch.setenv("ONE_CHECKPOINT_STEP", "last")
    monkeypatch.setenv("ONE_CHECKPOINT_OUT", str(tmp_path))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert matplotlib.image.imread(tmp_path / "induction_pattern.png")[..., :3].var() > 1e-3

    got = json.loads((tmp_path / "ablation.json").read_text())
    assert got["step"] == int(store.open_archive(trained_induction_tiny).steps[-1])
    assert got["layer"] == 1 and got["induction_score"] > 0.3  # a real induction head: layer 1, a strong stripe
    assert got["ablated_loss"] > got["clean_loss"] + 0.1
    # the notebook's ablated loss against a weight edit: that head's rows of W_O set to zero
    info = store.read_run_json(trained_induction_tiny)
    probe = scalars.engine.build_run_probe("repeated_tokens", trained_induction_tiny, info, ModelConfig.from_dict(info["model"]))
    tokens, T = probe.inputs, probe.metadata["T"]
    model = scalars.load_model(trained_induction_tiny, "last")
    W_O = model.model.blocks[got["layer"]].attn.W_O
    edited = eqx.tree_at(lambda m: m.model.blocks[got["layer"]].attn.W_O, model, W_O.at[got["head"]].set(0.0))
    loss = float(jax.vmap(next_token_losses)(edited(tokens), tokens)[:, T + 1:].mean())
    assert abs(loss - got["ablated_loss"]) < 1e-4
