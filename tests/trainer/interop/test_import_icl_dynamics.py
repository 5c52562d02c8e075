"""icl-dynamics import on the real fixture runs: record naming, an independent forward, sanity, store output."""

import math
import re
import shutil
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from trainer.interop.icl_dynamics import (
    checkpoint_files,
    eqx_record_layout,
    icl_dynamics_label_pairs,
    icl_dynamics_model_config,
    icl_dynamics_probe,
    import_icl_dynamics,
    load_icl_dynamics_checkpoint,
    load_icl_dynamics_model,
    read_eqx_records,
    read_icl_dynamics_config,
    read_log_h5,
    read_named_records,
)
from trainer.model import build_model, named_leaves
from tests._paths import FIXTURES as ALL_FIXTURES

FIXTURES = ALL_FIXTURES / "icl-dynamics"
MAIN, MLP = FIXTURES / "omniglot50_rl5_synthetic", FIXTURES / "omniglot50_rl5_synthetic_mlp"
RUNS = {"main": (MAIN, [0, 24000, 32000, 40000, 100000], 75), "mlp": (MLP, [0, 32000, 60000], 119)}
EXEMPLAR0 = FIXTURES / "synthetic_data" / "train_classes_exemplar0.npy"
README_TRAIN_PAIRS = [(0, 4), (1, 2), (0, 1), (2, 4), (0, 2), (1, 3), (0, 3), (1, 4)]


def test_fixtures_present():
    for folder, steps, _ in RUNS.values():
        assert (folder / "config.json").is_file(), f"fixture run {folder} is missing"
        assert [s for s, _ in checkpoint_files(folder)] == steps
    assert EXEMPLAR0.is_file()


# ---------------------------------------------------------------------------------- records


def readme_tables() -> dict[str, list[tuple]]:
    """(index, offset, dtype, shape, name) of every row of the README's record tables 4.1 / 4.2."""
    text = (FIXTURES / "README.md").read_text()
    main = text.split("### 4.1")[1].split("### 4.2")[0]
    mlp = text.split("### 4.2")[1].split("## 5.")[0]
    row = re.compile(r"^\| (\d+) \| (\d+) \| (\w+) \| \(([^)]*)\) \| `([^`]+)`", re.M)

    def parse(section):
        out = []
        for m in row.finditer(section):
            shape = tuple(int(s) for s in m.group(4).replace(" ", "").split(",") if s)
            out.append((int(m.group(1)), int(m.group(2)), m.group(3), shape, m.group(5)))
        return out

    return {"main": parse(main), "mlp": parse(mlp)}


@pytest.mark.parametrize("run", ["main", "mlp"])
def test_every_record_parsed_and_named(run):
    folder, steps, n_records = RUNS[run]
    config = read_icl_dynamics_config(folder)
    layout = eqx_record_layout(config)
    assert len(layout) == n_records and len({r.name for r in layout}) == n_records
    table = readme_tables()[run]
    assert len(table) == (75 if run == "main" else 65)  # the MLP table lists model, count and seeds only
    for step, path in checkpoint_files(folder):
        records = read_eqx_records(path, config)
        assert len(records) == n_records
        offsets = np.cumsum([0] + [128 + r.nbytes for r in records])
        assert offsets[-1] == path.stat().st_size
        for i, offset, dtype, shape, name in table:
            assert layout[i].name == name, (i, layout[i].name, name)
            assert records[i].dtype == np.dtype(dtype) and records[i].shape == shape, (i, name)
            assert offsets[i] == offset, (i, name)
        named = read_named_records(path, config)
        assert list(named) == [r.name for r in layout]
        assert int(named["iter"]) == step and int(named["opt_state[0].count"]) == step // 32
        # Adam moments: one per float32 model array, same shapes
        weights = [r for r in layout if r.is_weight]
        assert len([n for n in named if n.startswith("opt_state[0].mu.")]) == len(weights)
        for r in weights:
            for m in ("mu", "nu"):
                assert named[f"opt_state[0].{m}." + r.name[len("model."):]].shape == r.shape
        assert (named[[n for n in named if n.startswith("opt_state[0].nu.")][0]] >= 0).all()


def test_truncated_checkpoint_refused(tmp_path):
    config = read_icl_dynamics_config(MAIN)
    src = MAIN / "checkpoints" / "00000024000.eqx"
    raw = src.read_bytes()
    cut = tmp_path / "00000024000.eqx"
    cut.write_bytes(raw[:184515 + 100])  # inside record 17's header (after qkv.weight)
    with pytest.raises(ValueError, match=r"00000024000\.eqx record 17 \(model\.transformer\.blocks\[0\]\.attn\.attn_drop\.p\)"):
        read_eqx_records(cut, config)
    cut.write_bytes(raw[:135235 + 128 + 1000])  # inside record 16's data
    with pytest.raises(ValueError, match=r"record 16 \(model\.transformer\.blocks\[0\]\.attn\.qkv\.weight\) is truncated"):
        load_icl_dynamics_checkpoint(cut, config)
    cut.write_bytes(raw[:540463])  # ends cleanly after record 56: records 57.. missing
    with pytest.raises(ValueError, match=r"00000024000\.eqx has 57 records .* record 57 \(opt_state\[0\]\.nu\.example_embed\.weight\) is missing"):
        read_eqx_records(cut, config)
    assert len(read_eqx_records(cut)) == 57  # a cut at a record boundary is found only with the config...
    cut.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"record 74 is truncated"):
        read_eqx_records(cut)  # ...a cut inside a record without it too


def swap_records(raw: bytes, i: int, j: int) -> bytes:
    """The file with records i < j exchanged (headers and data), using README offsets via headers."""
    spans, pos = [], 0
    import io

    buf = io.BytesIO(raw)
    while pos < len(raw):
        arr = np.load(buf)
        spans.append((pos, buf.tell()))
        pos = buf.tell()
        del arr
    parts = [raw[a:b] for a, b in spans]
    parts[i], parts[j] = parts[j], parts[i]
    return b"".join(parts)


def test_swapped_records_refused(tmp_path):
    config = read_icl_dynamics_config(MAIN)
    raw = (MAIN / "checkpoints" / "00000032000.eqx").read_bytes()
    bad = tmp_path / "00000032000.eqx"
    bad.write_bytes(swap_records(raw, 16, 19))  # qkv.weight <-> proj.weight
    with pytest.raises(
        ValueError,
        match=r"checkpoint .*00000032000\.eqx record 16 \(model\.transformer\.blocks\[0\]\.attn\.qkv\.weight\) "
        r"has shape \(64, 64\) float32 but the config implies \(192, 64\) float32",
    ):
        load_icl_dynamics_checkpoint(bad, config)
    bad.write_bytes(swap_records(raw, 11, 12))  # num_heads (int64) <-> causal (bool)
    with pytest.raises(ValueError, match=r"record 11 \(model\.transformer\.blocks\[0\]\.attn\.num_heads\)"):
        read_eqx_records(bad, config)
    mlp_config = read_icl_dynamics_config(MLP)  # a checkpoint of another architecture
    with pytest.raises(ValueError, match=r"record 1 \(model\.embed_dim\) holds 64 but the config implies 32"):
        read_eqx_records(MAIN / "checkpoints" / "00000000000.eqx", mlp_config)


# ---------------------------------------------------------------------- independent forward


def raw_records(path: Path) -> list[np.ndarray]:
    """numpy.load until EOF (README section 10), independent of the importer's parser."""
    out = []
    with open(path, "rb") as f:
        size = path.stat().st_size
        while f.tell() < size:
            out.append(np.load(f))
    return out


def reference_logits(path: Path, config: dict, examples: np.ndarray, labels: np.ndarray):
    """README section 6 in numpy float64 from raw record indices; returns (logits (N, T, C), patterns)."""
    r = [np.asarray(a, np.float64) for a in raw_records(path)]
    d, H, depth = config["d_model"], config["num_heads"], config["depth"]
    dh, mlp = d // H, config["mlp_ratio"] is not None
    stride = 23 if mlp else 13  # records per block (README tables 4.1 / 4.2)
    assert r[3].shape == (d, 512) and r[7].shape == (d, config["model_output_classes"])

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    def rope(x):  # (N, T, dh), interleaved pairs
        T = x.shape[1]
        i = np.arange(dh // 2)
        ang = np.arange(T)[:, None] * 10000.0 ** (-2 * i / dh)[None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * np.cos(ang) - b * np.sin(ang)
        out[..., 1::2] = a * np.sin(ang) + b * np.cos(ang)
        return out

    e = examples.astype(np.float64) @ r[3].T + r[4]  # (N, P, d)
    lab = r[7][:, labels].transpose(1, 2, 0)  # column y of W_lab -> (N, P, d)
    N, P = labels.shape
    x = np.stack([e, lab], axis=2).reshape(N, 2 * P, d)[:, :-1]
    T = x.shape[1]
    patterns = []
    for layer in range(depth):
        base = 9 + layer * stride
        g1, b1, W, Wp = r[base], r[base + 1], r[base + 7], r[base + 10]
        assert W.shape == (3 * d, d) and Wp.shape == (d, d)
        h = ln(x, g1, b1)
        qkv = h @ W.T
        heads, pats = [], []
        for hd in range(H):
            q = rope(qkv[..., hd * dh:(hd + 1) * dh])
            k = rope(qkv[..., d + hd * dh:d + (hd + 1) * dh])
            v = qkv[..., 2 * d + hd * dh:2 * d + (hd + 1) * dh]
            s = q @ k.transpose(0, 2, 1) * dh**-0.5
            s = np.where(np.tril(np.ones((T, T), bool)), s, -1e20)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            pats.append(a)
            heads.append(a @ v)
        patterns.append(np.stack(pats, 1))  # (N, H, T, T)
        x = x + np.concatenate(heads, -1) @ Wp.T
        if mlp:
            g2, b2, W1, c1, W2, c2 = (r[base + o] for o in (13, 14, 15, 16, 19, 20))
            a = ln(x, g2, b2) @ W1.T + c1
            gelu = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
            x = x + gelu @ W2.T + c2
    fin = 9 + depth * stride
    z = ln(x, r[fin], r[fin + 1])
    assert r[fin + 3].shape == (config["model_output_classes"], d)
    return z @ r[fin + 3].T + r[fin + 4], patterns


@pytest.fixture(scope="module")
def probe():
    return icl_dynamics_probe(read_icl_dynamics_config(MAIN), train_exemplar0=EXEMPLAR0)


@eqx.filter_jit
def _forward(model, examples, labels):
    aux = jax.vmap(lambda e, l: model.call_with_all_aux({"examples": e, "labels": l}))(examples, labels)
    return aux["logits"], [lo["attn_output"]["pattern"] for lo in aux["layer_outputs"]]


def project_forward(path: Path, config: dict, examples, labels):
    """Logits and attention patterns of our model loaded through the importer."""
    step, model = load_icl_dynamics_model(path, config)
    assert model.config == icl_dynamics_model_config(config) and step == int(path.stem)
    logits, patterns = _forward(model, examples, labels)
    return np.asarray(logits), [np.asarray(p) for p in patterns]


@pytest.mark.parametrize("run", ["main", "mlp"])
def test_forward_equals_independent_numpy(run, probe):
    folder, steps, _ = RUNS[run]
    config = read_icl_dynamics_config(folder)
    idx = np.random.default_rng(0).choice(len(probe["labels"]), 300, replace=False)
    examples, labels = probe["examples"][idx], probe["labels"][idx]
    for step, path in checkpoint_files(folder):
        ours, our_patterns = project_forward(path, config, examples, labels)
        ref, ref_patterns = reference_logits(path, config, examples, labels)
        assert ours.shape == ref.shape == (300, 5, 5)
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5, err_msg=f"{run} step {step}")
        for a, b in zip(our_patterns, ref_patterns):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{run} step {step} patterns")


def test_model_config_matches_runs():
    main = icl_dynamics_model_config(read_icl_dynamics_config(MAIN))
    assert (main.n_layers, main.d_model, main.n_heads, main.d_head, main.attn_only) == (2, 64, 8, 8, True)
    assert (main.positional, main.rope_base, main.qkv_bias, main.out_bias, main.d_in, main.n_labels) == (
        "rope", 10000.0, False, False, 512, 5)
    mlp = icl_dynamics_model_config(read_icl_dynamics_config(MLP))
    assert (mlp.d_model, mlp.n_heads, mlp.attn_only, mlp.mlp_width, mlp.activation, mlp.mlp_bias) == (
        32, 4, False, 128, "gelu_new", True)
    leaves = jax.eval_shape(lambda: named_leaves(build_model(mlp)))
    _, params, opt, _ = load_icl_dynamics_checkpoint(MLP / "checkpoints" / "00000060000.eqx",
                                                      read_icl_dynamics_config(MLP))
    assert {n: v.shape for n, v in params.items()} == {n: v.shape for n, v in leaves.items()}
    assert set(opt["mu"]) == set(opt["nu"]) == set(params) and opt["count"] == 1875


def test_label_pairs_and_probe(tmp_path, probe):
    config = read_icl_dynamics_config(MAIN)
    assert list(icl_dynamics_label_pairs(config)["train"]) == README_TRAIN_PAIRS
    ex, lab, ci = probe["examples"], probe["labels"], probe["correct_index"]
    assert ex.shape == (78400, 3, 512) and ex.dtype == np.float32
    assert lab.shape == (78400, 3) and lab.dtype == np.int32 and ci.shape == (78400,)
    x0 = np.load(EXEMPLAR0)
    # first sequence: classes (0, 1), labels (0, 4), query c0; second half: query c1
    np.testing.assert_array_equal(ex[0], x0[[0, 1, 0]])
    assert lab[0].tolist() == [0, 4, 0] and ci[0] == 0
    np.testing.assert_array_equal(ex[39200], x0[[0, 1, 1]])
    assert lab[39200].tolist() == [0, 4, 4] and ci[39200] == 1
    assert lab[8 * 2450].tolist() == [4, 0, 4]  # reversed pairs follow the 8 training pairs
    np.testing.assert_array_equal(lab[np.arange(78400), 2 * ci], lab[:, 2])  # the correct label is the target


# --------------------------------------------------------------------------------- sanity


def induction_strength(patterns_layer1, correct_index):
    """Mean over sequences of A[query, correct label] - A[query, wrong label], per head."""
    n = len(correct_index)
    q = patterns_layer1[:, :, 4, :]  # (N, H, T)
    right = q[np.arange(n), :, 2 * correct_index + 1]
    wrong = q[np.arange(n), :, 2 * (1 - correct_index) + 1]
    return (right - wrong).mean(0)


def test_main_run_learns_in_context(probe):
    config = read_icl_dynamics_config(MAIN)
    idx = np.random.default_rng(1).choice(len(probe["labels"]), 4000, replace=False)
    examples, labels, ci = probe["examples"][idx], probe["labels"][idx], probe["correct_index"][idx]
    acc, strength = {}, {}
    for step in (0, 100000):
        logits, patterns = project_forward(MAIN / "checkpoints" / f"{step:011d}.eqx", config, examples, labels)
        acc[step] = float((logits[:, -1].argmax(-1) == labels[:, -1]).mean())
        strength[step] = induction_strength(patterns[1], ci)
    assert acc[0] < 0.6, acc  # chance: 0.2 over 5 labels, 0.5 between the two context labels
    assert acc[100000] > 0.98, acc
    assert (strength[100000] - strength[0]).max() > 0.5, strength


# ---------------------------------------------------------------------------------- import


@pytest.mark.parametrize("run", ["main", "mlp"])
def test_import_writes_run_dir(run, tmp_path):
    import store

    folder, steps, _ = RUNS[run]
    out = tmp_path / run
    source = {"exemplars": EXEMPLAR0} if run == "main" else {"data": "synthetic"}
    assert import_icl_dynamics([folder], out, **source) == [out]
    # the paper's probe vectors are stored with the run; the synthetic stand-in regenerates them bit for bit
    np.testing.assert_array_equal(np.load(out / "probes" / "icl_dynamics_exemplar0.npy"), np.load(EXEMPLAR0))
    reader = store.open_archive(out)
    assert reader.steps.tolist() == steps and reader.n_committed == len(steps)
    config = read_icl_dynamics_config(folder)
    _, params, _, _ = load_icl_dynamics_checkpoint(folder / "checkpoints" / f"{steps[-1]:011d}.eqx", config)
    stored = reader.load(steps[-1])
    assert set(stored) == set(params)
    for name in params:
        np.testing.assert_array_equal(stored[name], params[name])
    info = store.read_run_json(out)
    assert info["step_unit"] == "sequences" and info["steps"] == steps
    assert info["optimizer_steps"] == [s // 32 for s in steps]
    assert info["config"]["source"] == "icl-dynamics" and info["config"]["original_config"] == config
    assert info["config"]["model"] == icl_dynamics_model_config(config).to_dict()
    assert info["seeds"] == {"init_seed": 5, "train_seed": 0, "eval_seed": 1}
    assert info["config"]["task"]["label_pairs"] == [list(p) for p in README_TRAIN_PAIRS]
    assert info["config"]["train"]["batch_size"] == 32 and info["config"]["train"]["steps"] == steps[-1] // 32
    data = info["config"]["task"]["data"]
    if run == "mlp":  # --data synthetic: the task regenerates the whole stand-in (evaluator probes need it)
        assert (data["source"], data["n_classes"], data["n_exemplars"], data["dim"]) == ("synthetic", 1623, 5, 512)
    assert info["probe_data"]["icl_dynamics_exemplar0"]["shape"] == [50, 512]
    log = read_log_h5(folder / "log.h5")
    metrics = store.open_metrics(out)
    train = metrics.sel(step=log["train"]["step"])
    np.testing.assert_array_equal(train["train_loss"].values, log["train"]["train_loss"])
    np.testing.assert_array_equal(train["optimizer_step"].values, log["train"]["step"] / 32)
    evals = metrics.sel(step=log["eval"]["step"])
    assert np.isnan(metrics["train_loss"].sel(step=0))  # step 0 has an eval, no training loss
    np.testing.assert_allclose(evals["eval_fsl_train_accuracy"].values, log["eval"]["eval_fsl_train_accuracy"])
    assert evals["eval_fsl_train_accuracy"].values[-1] == 1.0 if run == "main" else True


def test_read_log_h5_matches_file():
    import h5py

    log = read_log_h5(MAIN / "log.h5")
    with h5py.File(MAIN / "log.h5") as f:
        np.testing.assert_array_equal(log["train"]["train_loss"], f["train_loss"][...])
        np.testing.assert_array_equal(log["train"]["step"], np.arange(1, 3126) * 32)
        np.testing.assert_allclose(log["eval"]["eval_fsl_val_rl_loss"], f["fsl_val_rl/loss"][...].mean(1), rtol=1e-6)
        assert log["eval"]["step"].tolist() == f["eval_iter"][...].tolist()


# ------------------------------------------------------------------------------ bad input


def test_non_run_folder_refused(tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"not_a_run' is not an icl-dynamics run folder: it has no config\.json and checkpoints/"):
        import_icl_dynamics([empty], out)
    with pytest.raises(ValueError, match="is not a directory"):
        import_icl_dynamics([tmp_path / "missing"], out)
    assert not out.exists()


def test_corrupt_checkpoint_writes_nothing(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(MAIN, run)
    target = run / "checkpoints" / "00000040000.eqx"
    raw = target.read_bytes()
    target.chmod(0o644)
    target.write_bytes(swap_records(raw, 16, 19))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"00000040000\.eqx record 16 \(model\.transformer\.blocks\[0\]\.attn\.qkv\.weight\)"):
        import_icl_dynamics([MLP, run], out, data="synthetic")
    assert not out.exists()


def test_existing_output_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ValueError, match="already exists and is not empty; choose a new --out"):
        import_icl_dynamics([MAIN], out)


def test_absent_data_file_names_the_flag(tmp_path):
    config = read_icl_dynamics_config(MAIN)
    with pytest.raises(ValueError, match=r"names data file 'synthetic_omniglot_features\.h5'.*`--data FILE\.h5`"):
        icl_dynamics_probe(config, run_folder=MAIN)
    with pytest.raises(ValueError, match=r"missing\.h5 does not exist; .*`--data FILE\.h5`"):
        icl_dynamics_probe(config, data=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match=r"missing\.h5 does not exist; pass the features file with --data FILE\.h5"):
        import_icl_dynamics([MAIN], tmp_path / "out", data=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match=r"names data file 'synthetic_omniglot_features\.h5', which was not found .*"
                                         r"--data FILE\.h5, .*--exemplars FILE\.npy, or --data synthetic"):
        import_icl_dynamics([MAIN], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_probe_from_data_file(tmp_path, probe):
    """The full features file (README section 2, made here) gives the same probe as the shipped npy."""
    import h5py

    # README section 2's generator, cut to the 50 training classes: the (1623, 5, 512) noise draw is
    # sequential, so its first 50 classes are a (50, 5, 512) draw (the full 16.6 MB file is not needed)
    rng = np.random.default_rng(0)
    means = rng.standard_normal((1623, 512)).astype(np.float32)[:50]
    feat = (means[:, None] + np.float32(0.1) * rng.standard_normal((50, 5, 512)).astype(np.float32)).astype(np.float32)
    np.testing.assert_array_equal(feat[:, 0], np.load(EXEMPLAR0))
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("resnet18/224/feat", data=feat)
    config = read_icl_dynamics_config(MAIN)
    from_data = icl_dynamics_probe(config, data=path)
    for key in ("examples", "labels", "correct_index"):
        assert np.array_equal(from_data[key], probe[key]), key  # (assert_array_equal is slow on 480 MB)
    run = tmp_path / "run"
    shutil.copytree(MAIN, run)  # the config's relative data_file found next to the run folder
    shutil.copy(path, tmp_path / "synthetic_omniglot_features.h5")
    small = dict(config, class_split=[3, 1520, 100])  # 3 training classes keep this probe small
    found = icl_dynamics_probe(small, run_folder=run)
    assert found["examples"].shape == (3 * 2 * 16 * 2, 3, 512)
    np.testing.assert_array_equal(found["examples"][0], feat[[0, 1, 0], 0])
    wrong = dict(config, data_path_in_file="nope")
    with pytest.raises(ValueError, match=r"no rank-3 dataset at 'nope'.*`--data FILE\.h5`"):
        icl_dynamics_probe(wrong, data=path)


def test_import_with_data_file(tmp_path):
    """--data FILE.h5: the stand-in written to disk (README section 2) is validated, read and recorded."""
    import h5py

    from trainer.tasks import synthetic_clusters

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("resnet18/224/feat", data=synthetic_clusters(0, 1623, 5, 512, 0.1))
    out = tmp_path / "mlp"
    import_icl_dynamics([MLP], out, data=path)
    np.testing.assert_array_equal(np.load(out / "probes" / "icl_dynamics_exemplar0.npy"), np.load(EXEMPLAR0))
    import store

    info = store.read_run_json(out)
    assert info["config"]["task"]["data"]["source"] == "h5"
    assert info["config"]["task"]["data"]["path"] == str(path.resolve())
    assert info["probe_data"]["icl_dynamics_exemplar0"]["origin"].startswith("h5 file")
    small = tmp_path / "small.h5"  # only the training classes: the evaluators' test classes are missing
    with h5py.File(small, "w") as f:
        f.create_dataset("resnet18/224/feat", data=np.zeros((50, 5, 512), np.float32))
    with pytest.raises(ValueError, match=r"small\.h5 dataset 'resnet18/224/feat' has shape \(50, 5, 512\) but the run "
                                         r"needs at least \(1623, 5, 512\)"):
        import_icl_dynamics([MLP], tmp_path / "out2", data=small)
    assert not (tmp_path / "out2").exists()


def test_import_killed_while_writing_leaves_no_run_and_the_rerun_succeeds(tmp_path):
    """SIGKILL once the archive is being written: the target never appears half-written (it is built
    beside it and renamed), and the rerun removes the dead build and imports."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "imported"
    cmd = [sys.executable, "-m", "cli.app", "import", "--from", "icl-dynamics", str(MAIN), "--out", str(out),
           "--exemplars", str(EXEMPLAR0)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, partial = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.glob(".imported.*.partial") if (p / "checkpoints.zarr").exists()]
        if partial:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and partial, "the kill did not land while the archive was written"
    assert partial[0].exists() and not out.exists()  # the dead build is beside the target, not in it
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "run.json").exists() and not list(tmp_path.glob(".imported.*.partial"))
