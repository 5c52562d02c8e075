"""Import runs of the public `aadityasingh/icl-dynamics` code (Singh et al. 2024) as ordinary run dirs.

A run folder holds `config.json`, `checkpoints/NNNNNNNNNNN.eqx` (N = training sequences seen)
and `log.h5`. A `.eqx` file is NPY records back to back (equinox `tree_serialise_leaves` of
`{iter, model, opt_state, seeds}`); `eqx_record_layout` names every record from the config,
`load_icl_dynamics_checkpoint` maps the weights onto this project's classifier
(`icl_dynamics_model_config`), `read_log_h5` reads the training log, and
`import_icl_dynamics` writes `run.json`, `checkpoints.zarr` and `metrics.zarr`. Steps stay in
the original unit, training sequences; the Adam step is `sequences / train_bs`.
Formats follow the fixture README (tests/fixtures/icl-dynamics/README.md, sections 4-9).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..model import ModelConfig, build_model, load_named_leaves, named_leaves
from .._hf_files import build_atomically
from ..presets import PRESETS
from ..tasks import ICL_DYNAMICS_TRAIN_PAIRS, ICL_DYNAMICS_VAL_PAIRS, ICLTaskConfig, icl_dynamics_probe_set
from ..tasks import relabel_pair_split
from .icl_dynamics_data import EXEMPLAR0_FILE, DataSource, resolve_data_source

__all__ = [
    "RecordSpec", "eqx_record_layout", "read_eqx_records", "read_named_records", "icl_dynamics_model_config",
    "load_icl_dynamics_checkpoint", "load_icl_dynamics_model", "read_log_h5", "metric_rows", "icl_dynamics_task", "icl_dynamics_label_pairs",
    "icl_dynamics_probe", "read_icl_dynamics_config", "checkpoint_files", "import_icl_dynamics",
]

_CKPT_NAME = re.compile(r"^(\d{11})\.eqx$")
_ADAM = ("opt_state[0].mu.", "opt_state[0].nu.")
_SEEDS = ("eval_model_seed", "train_data_seed", "train_model_seed")
# The relabeling split of README section 3; JAX-version independent, so preferred when it applies.
_README_SPLIT = (5, (8.0, 2.0, 0.0), 20)
_EVAL_RENAME = {"acc": "accuracy", "in_context_acc": "in_context_accuracy", "out_context_acc": "out_context_accuracy"}


# --------------------------------------------------------------------------------------------
# config.json


def _cfg(config_json: dict, key: str) -> Any:
    if key not in config_json:
        raise ValueError(
            f"icl-dynamics config.json lacks the key '{key}'; pass the config.json that main.py wrote for the run"
        )
    return config_json[key]


def _check_supported(config_json: dict) -> None:
    """Refuse settings whose checkpoint layout or forward this importer cannot reproduce exactly."""
    if _cfg(config_json, "pos_embedding_type") != "rope":
        raise ValueError(
            f"icl-dynamics run uses pos_embedding_type={config_json['pos_embedding_type']!r}; only 'rope' runs "
            "can be imported (their checkpoint layout is the documented one)"
        )
    if _cfg(config_json, "no_norm"):
        raise ValueError("icl-dynamics run was trained with --no_norm; only runs with LayerNorm can be imported")
    if _cfg(config_json, "not_causal"):
        raise ValueError("icl-dynamics run was trained with --not_causal; this project's model is always causal")


def _mlp_hidden(config_json: dict) -> int | None:
    ratio = _cfg(config_json, "mlp_ratio")
    return None if ratio is None else int(round(int(_cfg(config_json, "d_model")) * float(ratio)))


def icl_dynamics_model_config(config_json: dict, *, d_in: int = 512) -> ModelConfig:
    """The project's classifier computing exactly the icl-dynamics forward of `config_json`.

    Pre-LN (eps 1e-5, gain and bias), interleaved RoPE with base `sin_time`, no qkv/out-proj
    bias, MLP (`mlp_ratio`, gelu tanh approximation = "gelu_new", biases) or attention-only
    when `mlp_ratio` is null, exemplar map with bias, bias-free label table, unembedding with
    bias. `d_in` is the data's feature size (512 for the Omniglot ResNet-18 features).
    """
    _check_supported(config_json)
    hidden = _mlp_hidden(config_json)
    context_len = int(config_json.get("train_context_len") or 2)
    pe_lens = [int(v) for v in (config_json.get("pe_context_len") or []) if v is not None]
    return ModelConfig(
        n_layers=int(_cfg(config_json, "depth")),
        d_model=int(_cfg(config_json, "d_model")),
        n_heads=int(_cfg(config_json, "num_heads")),
        d_mlp=hidden,
        n_ctx=2 * max([context_len, *pe_lens]) + 1,
        head="classifier",
        vocab_size=0,
        d_in=int(d_in),
        n_labels=int(_cfg(config_json, "model_output_classes")),
        attn_only=hidden is None,
        layernorm=True,
        ln_eps=1e-5,
        activation="gelu_new",
        positional="rope",
        rope_base=float(_cfg(config_json, "sin_time")),
        qkv_bias=False,
        out_bias=False,
        mlp_bias=True,
        tied_unembed=False,
        unembed_bias=True,
    )


def read_icl_dynamics_config(run_folder: str | Path) -> dict:
    """`config.json` of an icl-dynamics run folder; refuse a folder that is not one."""
    folder = Path(run_folder)
    if not folder.is_dir():
        raise ValueError(f"'{folder}' is not a directory; pass an icl-dynamics run folder (config.json, checkpoints/)")
    config_path, ckpt_dir = folder / "config.json", folder / "checkpoints"
    if not config_path.is_file() or not ckpt_dir.is_dir():
        lacking = " and ".join(p for p, ok in (("config.json", config_path.is_file()),
                                                ("checkpoints/", ckpt_dir.is_dir())) if not ok)
        raise ValueError(
            f"'{folder}' is not an icl-dynamics run folder: it has no {lacking}; pass the folder main.py wrote "
            "(it holds config.json, checkpoints/ and log.h5)"
        )
    try:
        config_json = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{config_path}' is not valid JSON ({exc}); restore the run's config.json") from None
    if not isinstance(config_json, dict) or "d_model" not in config_json or "depth" not in config_json:
        raise ValueError(f"'{config_path}' is not an icl-dynamics config (no d_model/depth keys)")
    return config_json


def checkpoint_files(run_folder: str | Path) -> list[tuple[int, Path]]:
    """`(sequences, path)` of every `checkpoints/NNNNNNNNNNN.eqx`, sorted by step."""
    ckpt_dir = Path(run_folder) / "checkpoints"
    found = []
    for p in sorted(ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []:
        m = _CKPT_NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
        elif p.suffix == ".eqx":
            raise ValueError(f"checkpoint file name '{p}' is not 11 digits + .eqx; rename it to the step it holds")
    if not found:
        raise ValueError(f"'{ckpt_dir}' holds no NNNNNNNNNNN.eqx checkpoints; nothing to import")
    return sorted(found)


# --------------------------------------------------------------------------------------------
# .eqx records


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """One NPY record of a checkpoint: pytree path, dtype, shape, and the value a static field must hold."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    value: Any = None  # expected value of a hyperparameter field (None: not checked)

    @property
    def is_weight(self) -> bool:
        return self.name.startswith("model.") and self.dtype == "float32"


def _model_records(config_json: dict, d_in: int) -> list[RecordSpec]:
    d, H = int(_cfg(config_json, "d_model")), int(_cfg(config_json, "num_heads"))
    C, hidden = int(_cfg(config_json, "model_output_classes")), _mlp_hidden(config_json)
    sin_time = float(_cfg(config_json, "sin_time"))
    f4, f8, i8, b1 = "float32", "float64", "int64", "bool"

    def drop(prefix: str) -> list[RecordSpec]:
        return [RecordSpec(prefix + ".p", f8, ()), RecordSpec(prefix + ".inference", b1, ())]

    out = [
        RecordSpec("model.embed_dim", i8, (), d),
        RecordSpec("model.num_classes", i8, (), C),
        RecordSpec("model.example_embed.weight", f4, (d, d_in)),
        RecordSpec("model.example_embed.bias", f4, (d,)),
        *drop("model.example_embed_drop"),
        RecordSpec("model.label_embed.weight", f4, (d, C)),
        RecordSpec("model.transformer.embed_dim", i8, (), d),
    ]
    for i in range(int(_cfg(config_json, "depth"))):
        b = f"model.transformer.blocks[{i}]."
        out += [
            RecordSpec(b + "norm1.weight", f4, (d,)),
            RecordSpec(b + "norm1.bias", f4, (d,)),
            RecordSpec(b + "attn.num_heads", i8, (), H),
            RecordSpec(b + "attn.causal", b1, (), True),
            RecordSpec(b + "attn.use_rope", b1, (), True),
            RecordSpec(b + "attn.sin_time", f8, (), sin_time),
            RecordSpec(b + "attn.scale", f8, (), (d // H) ** -0.5),
            RecordSpec(b + "attn.qkv.weight", f4, (3 * d, d)),
            *drop(b + "attn.attn_drop"),
            RecordSpec(b + "attn.proj.weight", f4, (d, d)),
            *drop(b + "attn.proj_drop"),
        ]
        if hidden is not None:
            out += [
                RecordSpec(b + "norm2.weight", f4, (d,)),
                RecordSpec(b + "norm2.bias", f4, (d,)),
                RecordSpec(b + "mlp.fc1.weight", f4, (hidden, d)),
                RecordSpec(b + "mlp.fc1.bias", f4, (hidden,)),
                *drop(b + "mlp.drop1"),
                RecordSpec(b + "mlp.fc2.weight", f4, (d, hidden)),
                RecordSpec(b + "mlp.fc2.bias", f4, (d,)),
                *drop(b + "mlp.drop2"),
            ]
    out += [
        RecordSpec("model.transformer.norm.weight", f4, (d,)),
        RecordSpec("model.transformer.norm.bias", f4, (d,)),
        RecordSpec("model.transformer.inference", b1, ()),
        RecordSpec("model.unembed.weight", f4, (C, d)),
        RecordSpec("model.unembed.bias", f4, (C,)),
        RecordSpec("model.inference", b1, ()),
    ]
    return out


def eqx_record_layout(config_json: dict, *, d_in: int = 512) -> list[RecordSpec]:
    """Every record of a checkpoint of this run, in file order (README section 4).

    `iter`, the model (weights and hyperparameter fields, declaration order), Adam `count`,
    `mu` and `nu` (one per float32 model array, same order), then the three PRNG keys.
    """
    _check_supported(config_json)
    model = _model_records(config_json, int(d_in))
    weights = [r for r in model if r.is_weight]
    adam = [RecordSpec(prefix + r.name[len("model."):], "float32", r.shape) for prefix in _ADAM for r in weights]
    return [
        RecordSpec("iter", "int64", ()),
        *model,
        RecordSpec("opt_state[0].count", "int32", ()),
        *adam,
        *[RecordSpec(f"seeds.{s}", "uint32", (2,)) for s in _SEEDS],
    ]


def _parse_records(path: Path, label: Callable[[int], str]) -> list[np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path} ({exc.strerror}); check the path") from None
    buf, records = io.BytesIO(raw), []
    fmt = np.lib.format
    while buf.tell() < len(raw):
        i, start = len(records), buf.tell()
        try:
            version = fmt.read_magic(buf)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(buf)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(buf)
            else:
                raise ValueError(f"unsupported NPY format version {version}")
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(
                f"checkpoint {path} {label(i)} at byte {start} is not a complete NPY record header ({exc}); "
                "the file is truncated or is not an icl-dynamics .eqx checkpoint"
            ) from None
        if dtype.hasobject:
            raise ValueError(f"checkpoint {path} {label(i)} holds Python objects ({dtype}); refusing to unpickle it")
        n_bytes = dtype.itemsize * math.prod(shape)
        data = buf.read(n_bytes)
        if len(data) < n_bytes:
            raise ValueError(
                f"checkpoint {path} {label(i)} is truncated: its header promises {n_bytes} bytes of {dtype} "
                f"{tuple(shape)} but only {len(data)} remain; copy the file again from the run"
            )
        arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        records.append(np.array(arr, dtype=dtype.newbyteorder("=")))
    return records


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_records(path: Path, records: list[np.ndarray], layout: list[RecordSpec]) -> None:
    for i, (arr, spec) in enumerate(zip(records, layout)):
        where = f"checkpoint {path} record {i} ({spec.name})"
        if arr.shape != spec.shape or arr.dtype != np.dtype(spec.dtype):
            raise ValueError(
                f"{where} has shape {_fmt_shape(arr.shape)} {arr.dtype} but the config implies "
                f"{_fmt_shape(spec.shape)} {spec.dtype}; the file is corrupted or belongs to another run"
            )
        if spec.value is not None:
            got = arr.item()
            ok = math.isclose(got, spec.value, rel_tol=1e-12) if isinstance(spec.value, float) else got == spec.value
            if not ok:
                raise ValueError(f"{where} holds {got!r} but the config implies {spec.value!r}; the checkpoint "
                                 "belongs to another run")
    if len(records) != len(layout):
        if len(records) < len(layout):
            nxt = layout[len(records)]
            raise ValueError(
                f"checkpoint {path} has {len(records)} records but the config implies {len(layout)}: record "
                f"{len(records)} ({nxt.name}) is missing; the file is truncated"
            )
        raise ValueError(
            f"checkpoint {path} has {len(records)} records but the config implies {len(layout)}: record "
            f"{len(layout)} and later are unexpected; the file belongs to another architecture"
        )


def _infer_d_in(records: list[np.ndarray], default: int = 512) -> int:
    # record 3 is model.example_embed.weight (d, D_in) in every layout
    if len(records) > 3 and records[3].ndim == 2:
        return int(records[3].shape[1])
    return default


def read_eqx_records(path: str | Path, config_json: dict | None = None, *, d_in: int | None = None) -> list[np.ndarray]:
    """All NPY records of a `.eqx` checkpoint, in file order.

    With `config_json`, every record's dtype and shape (and the hyperparameter fields' values)
    are checked against `eqx_record_layout`, and the record count must match; a mismatch or a
    truncated file raises ValueError naming the file and the record. `d_in` defaults to the
    exemplar map's input size stored in the file.
    """
    path = Path(path)
    layout = None
    if config_json is not None:
        layout = eqx_record_layout(config_json, d_in=512 if d_in is None else d_in)

    def label(i: int) -> str:
        return f"record {i}" + (f" ({layout[i].name})" if layout is not None and i < len(layout) else "")

    records = _parse_records(path, label)
    if config_json is not None:
        if d_in is None:
            layout = eqx_record_layout(config_json, d_in=_infer_d_in(records))
        _check_records(path, records, layout)
    return records


def read_named_records(path: str | Path, config_json: dict, *, d_in: int | None = None) -> dict[str, np.ndarray]:
    """`{pytree path: array}` of every record of a checkpoint (file order), validated against the config."""
    records = read_eqx_records(path, config_json, d_in=d_in)
    layout = eqx_record_layout(config_json, d_in=_infer_d_in(records) if d_in is None else d_in)
    return {spec.name: arr for spec, arr in zip(layout, records)}


# --------------------------------------------------------------------------------------------
# weights -> project leaves


def _to_project_leaves(get: Callable[[str], np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Project leaves from icl-dynamics arrays; `get(path)` takes a path below `model.`."""
    H, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
    out = {
        "embed.W_ex": get("example_embed.weight").T,  # (d, D_in) -> (D_in, d)
        "embed.b_ex": get("example_embed.bias"),
        "embed.W_lab": get("label_embed.weight").T,  # (d, C) one-hot map -> (C, d) table
    }
    for i in range(cfg.n_layers):
        src, dst = f"transformer.blocks[{i}].", f"blocks.{i}."
        out[dst + "ln1.w"] = get(src + "norm1.weight")
        out[dst + "ln1.b"] = get(src + "norm1.bias")
        qkv = get(src + "attn.qkv.weight")  # rows s*d + h*e + j: stream s, head h, component j
        for s, stream in enumerate("QKV"):
            out[dst + f"attn.W_{stream}"] = qkv[s * d:(s + 1) * d].reshape(H, e, d).transpose(0, 2, 1)
        out[dst + "attn.W_O"] = get(src + "attn.proj.weight").T.reshape(H, e, d)  # input h*e + j -> (H, e, d)
        if not cfg.attn_only:
            out[dst + "ln2.w"] = get(src + "norm2.weight")
            out[dst + "ln2.b"] = get(src + "norm2.bias")
            out[dst + "mlp.W_in"] = get(src + "mlp.fc1.weight").T
            out[dst + "mlp.b_in"] = get(src + "mlp.fc1.bias")
            out[dst + "mlp.W_out"] = get(src + "mlp.fc2.weight").T
            out[dst + "mlp.b_out"] = get(src + "mlp.fc2.bias")
    out["ln_final.w"] = get("transformer.norm.weight")
    out["ln_final.b"] = get("transformer.norm.bias")
    out["W_U"] = get("unembed.weight").T  # (C, d) -> (d, C)
    out["b_U"] = get("unembed.bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def _leaf_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """`leaf_specs(build_model(cfg))` from shapes alone (tracing; building eagerly takes seconds)."""
    shapes = jax.eval_shape(lambda: named_leaves(build_model(cfg)))
    return {name: (tuple(s.shape), np.dtype(s.dtype).name) for name, s in shapes.items()}


@functools.lru_cache(maxsize=8)
def _zero_model(cfg: ModelConfig):
    """A model of `cfg` with zero weights, made from shapes (no random init): a loading template."""
    shapes = eqx.filter_eval_shape(build_model, cfg)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def load_icl_dynamics_model(path: str | Path, config_json: dict, *, d_in: int | None = None):
    """`(sequences, model)`: the checkpoint as this project's `Transformer`, ready to call."""
    sequences, params, _, _ = load_icl_dynamics_checkpoint(path, config_json, d_in=d_in)
    cfg = icl_dynamics_model_config(config_json, d_in=params["embed.W_ex"].shape[0])
    return sequences, load_named_leaves(_zero_model(cfg), params)


def load_icl_dynamics_checkpoint(
    path: str | Path, config_json: dict, *, d_in: int | None = None
) -> tuple[int, dict[str, np.ndarray], dict[str, Any], dict[str, list[int]]]:
    """`(sequences, params, optimizer, seeds)` of one checkpoint, weights in this project's layout.

    `params` is keyed like `named_leaves(build_model(icl_dynamics_model_config(config_json)))`.
    `optimizer` is `{"name": "adam", "count": Adam steps, "mu": {...}, "nu": {...}}` with the
    moments mapped to the same names and layouts. `seeds` are the three raw threefry keys
    (`eval_model_seed`, `train_data_seed`, `train_model_seed`) as uint32 pairs.
    """
    path = Path(path)
    named = read_named_records(path, config_json, d_in=d_in)
    sequences = int(named["iter"])
    m = _CKPT_NAME.match(path.name)
    if m and int(m.group(1)) != sequences:
        raise ValueError(f"checkpoint {path} record 0 (iter) holds {sequences} but the file name says "
                         f"{int(m.group(1))}; the file was renamed or belongs to another run")
    count = int(named["opt_state[0].count"])
    bs = config_json.get("train_bs")
    if bs and sequences % int(bs) == 0 and count != sequences // int(bs):
        raise ValueError(f"checkpoint {path} record opt_state[0].count holds {count} Adam steps but {sequences} "
                         f"sequences at train_bs {bs} imply {sequences // int(bs)}; the file is inconsistent")
    cfg = icl_dynamics_model_config(config_json, d_in=named["model.example_embed.weight"].shape[1])
    params = _to_project_leaves(lambda p: named["model." + p], cfg)
    specs = _leaf_specs(cfg)
    assert set(params) == set(specs), (sorted(params), sorted(specs))  # our own mapping's invariant
    for name, (shape, _) in specs.items():
        assert params[name].shape == shape, (name, params[name].shape, shape)
    optimizer = {
        "name": "adam",
        "count": count,
        "mu": _to_project_leaves(lambda p: named[_ADAM[0] + p], cfg),
        "nu": _to_project_leaves(lambda p: named[_ADAM[1] + p], cfg),
    }
    seeds = {s: [int(v) for v in named[f"seeds.{s}"]] for s in _SEEDS}
    return sequences, params, optimizer, seeds


# --------------------------------------------------------------------------------------------
# log.h5


def read_log_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Training and evaluation metrics of `log.h5`.

    Returns `{"train": {"step": int64 (n,), "train_loss", "train_grad_norm", ...},
    "eval": {"step": int64 (k,), "eval_<evaluator>_<metric>": float64 (k,), ...}}`. Train steps are
    `train_iter` (sequences seen after that Adam step); eval steps are `eval_iter`. Each
    evaluator metric is the mean over its eval columns (bools as 0/1); `acc` is renamed
    `accuracy` (`eval_fsl_train_accuracy`, `eval_fsl_train_in_context_accuracy`, ...) as in runs
    trained by this project.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"log file {path} does not exist; pass an icl-dynamics run folder that has its log.h5")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"log file {path} is not a readable HDF5 file ({exc}); copy it again from the run") from None
    with f:
        if "train_iter" not in f or "eval_iter" not in f:
            raise ValueError(f"log file {path} has no train_iter/eval_iter datasets; it is not an icl-dynamics log.h5")
        train_iter = np.asarray(f["train_iter"][...], np.float64)
        steps = np.rint(train_iter).astype(np.int64)
        if not np.array_equal(steps, train_iter):
            raise ValueError(f"log file {path} dataset train_iter holds non-integer sequence counts")
        train: dict[str, np.ndarray] = {"step": steps}
        for name, node in f.items():
            if name.startswith("train_") and name != "train_iter" and isinstance(node, h5py.Dataset):
                values = np.asarray(node[...], np.float64)
                if values.shape != steps.shape:
                    raise ValueError(f"log file {path} dataset {name} has shape {values.shape} but train_iter has "
                                     f"{steps.shape}; the log is truncated or corrupted")
                train[name] = values
        eval_steps = np.asarray(f["eval_iter"][...]).astype(np.int64)
        evals: dict[str, np.ndarray] = {"step": eval_steps}
        for group_name, group in f.items():
            if not isinstance(group, h5py.Group):
                continue
            for metric, node in group.items():
                values = np.asarray(node[...])
                if values.ndim != 2 or values.shape[0] != eval_steps.shape[0]:
                    raise ValueError(f"log file {path} dataset {group_name}/{metric} has shape {values.shape}, "
                                     f"expected ({eval_steps.shape[0]}, n_eval_sequences) to match eval_iter")
                key = f"eval_{group_name}_{_EVAL_RENAME.get(metric, metric)}"
                evals[key] = values.astype(np.float64).mean(axis=1)
    return {"train": train, "eval": evals}


def metric_rows(log: dict, *, train_bs: int | None = None) -> list[tuple[int, dict[str, float]]]:
    """`read_log_h5` output as `(step, values)` rows with strictly increasing steps (for MetricsWriter).

    Train and eval entries at the same sequence count share a row; with `train_bs`, every row
    also gets `optimizer_step = step / train_bs`.
    """
    rows: dict[int, dict[str, float]] = {}
    for part in ("train", "eval"):
        cols = log[part]
        for i, step in enumerate(cols["step"].tolist()):
            row = rows.setdefault(int(step), {})
            row.update({k: float(v[i]) for k, v in cols.items() if k != "step"})
    if train_bs:
        for step, row in rows.items():
            row["optimizer_step"] = step / train_bs
    return sorted(rows.items())


# --------------------------------------------------------------------------------------------
# task and probe


def icl_dynamics_label_pairs(config_json: dict) -> dict[str, tuple[tuple[int, int], ...]]:
    """Train / val / test relabeling pairs of the run (README section 3).

    The README's pairs for 5 labels, split 8/2/0, seed 20; otherwise recomputed with
    `relabel_pair_split`, which equals the original only under the same JAX PRNG.
    """
    n = int(_cfg(config_json, "fs_relabel"))
    split = tuple(float(v) for v in _cfg(config_json, "fs_relabel_split"))
    seed = int(_cfg(config_json, "fs_relabel_split_seed"))
    if (n, split, seed) == _README_SPLIT:
        return {"train": ICL_DYNAMICS_TRAIN_PAIRS, "val": ICL_DYNAMICS_VAL_PAIRS, "test": ()}
    return relabel_pair_split(n, split, seed)


def _data_section(config_json: dict, data: Path | None, run_folder: Path | None) -> dict:
    base = copy.deepcopy(PRESETS["icl-dynamics"]["task"]["data"])
    original = str(_cfg(config_json, "data_file"))
    path = data
    if path is None:
        found = _find_data_file(config_json, run_folder)
        path = found if found is not None else Path(original)
    base.update(source="h5", path=str(Path(path).resolve()) if Path(path).exists() else str(path),
                h5_key=str(config_json.get("data_path_in_file") or base["h5_key"]))
    return base


def icl_dynamics_task(config_json: dict, *, data: Path | None = None, run_folder: Path | None = None,
                      data_section: dict | None = None) -> dict:
    """This project's `task` section (kind "icl", icl_dynamics_mode) for the run's training task.

    Its `data` is `data_section` if given, else the HDF5 file `data` or the config's `data_file`."""
    mixing = list(config_json.get("mixing_coeffs") or [1.0])
    if len(mixing) != 1:
        raise ValueError(f"icl-dynamics run mixes {len(mixing)} training samplers (mixing_coeffs {mixing}); only "
                         "runs with a single sampler can be imported")
    pairs = icl_dynamics_label_pairs(config_json)
    task = copy.deepcopy(PRESETS["icl-dynamics"]["task"])
    task.update(
        context_len=int(_cfg(config_json, "train_context_len")),
        n_labels=int(_cfg(config_json, "model_output_classes")),
        burstiness=int(list(config_json.get("pt_burstiness") or [1])[0]),
        p_bursty=1.0,
        zipf_alpha=float(config_json.get("zipf_alpha") or 0.0),
        class_split=[int(v) for v in _cfg(config_json, "class_split")],
        exemplar_split=[int(v) for v in _cfg(config_json, "exemplar_split")],
        noise_scale=float(config_json.get("noise_scale_train") or 0.0),
        icl_dynamics_mode=True,
        label_pairs=[list(p) for p in pairs["train"]],
        val_label_pairs=[list(p) for p in pairs["val"]],
        data=data_section if data_section is not None else _data_section(config_json, data, run_folder),
    )
    try:
        ICLTaskConfig(**{k: v for k, v in task.items() if k != "kind"})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the icl-dynamics task of this run cannot be expressed as this project's task: {exc}") from None
    return task


def _find_data_file(config_json: dict, run_folder: Path | None) -> Path | None:
    """The config's `data_file` (relative to where training started): tried in, beside, then outside the run."""
    name = Path(str(_cfg(config_json, "data_file")))
    candidates = [name]
    if run_folder is not None and not name.is_absolute():
        candidates = [Path(run_folder) / name, Path(run_folder).parent / name, name]
    return next((c for c in candidates if c.is_file()), None)


def _read_train_exemplar0(path: Path, key: str, n_train: int) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"data file {path} is not a readable HDF5 file ({exc}); pass the run's features "
                         "with `--data FILE.h5`") from None
    with f:
        node = f.get(key)
        if not isinstance(node, h5py.Dataset) or node.ndim != 3:
            raise ValueError(f"data file {path} has no rank-3 dataset at '{key}' (classes, exemplars, dim); pass "
                             "the run's features with `--data FILE.h5`")
        if node.shape[0] < n_train:
            raise ValueError(f"data file {path} dataset '{key}' has {node.shape[0]} classes but the run trains on "
                             f"{n_train}; pass the run's features with `--data FILE.h5`")
        return np.asarray(node[:n_train, 0, :], np.float32)


def icl_dynamics_probe(
    config_json: dict,
    *,
    data: str | Path | None = None,
    train_exemplar0: str | Path | np.ndarray | None = None,
    run_folder: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """The paper's probe set (README section 8) for this run: 78,400 sequences for 50 classes, 8 pairs.

    The exemplar-0 vectors of the training classes come from `train_exemplar0` (a (n_train,
    dim) array or .npy file) or else from the HDF5 features: `data`, or the config's
    `data_file` found next to `run_folder`; if neither exists this raises, naming `--data`.
    Returns `examples` float32 (N, 3, dim), `labels` int32 (N, 3) (last = target),
    `correct_index` int32 (N,) and `classes` int32 (N, 3).
    """
    n_train = int(_cfg(config_json, "class_split")[0])
    if train_exemplar0 is not None:
        x = np.load(train_exemplar0) if isinstance(train_exemplar0, (str, Path)) else np.asarray(train_exemplar0)
        if x.ndim != 2 or x.shape[0] != n_train:
            raise ValueError(f"train_exemplar0 has shape {x.shape} but the run has {n_train} training classes; "
                             f"pass a ({n_train}, dim) array of exemplar 0 of each training class")
    else:
        if data is not None:
            path = Path(data)
            if not path.is_file():
                raise ValueError(f"data file {path} does not exist; pass the run's HDF5 features with `--data FILE.h5`")
        else:
            path = _find_data_file(config_json, None if run_folder is None else Path(run_folder))
            if path is None:
                where = f" (looked next to {run_folder})" if run_folder is not None else ""
                raise ValueError(
                    f"the run's config.json names data file '{_cfg(config_json, 'data_file')}', which was not "
                    f"found{where}; pass the features file with `--data FILE.h5`"
                )
        key = str(config_json.get("data_path_in_file") or "resnet18/224/feat")
        x = _read_train_exemplar0(path, key, n_train)
    pairs = icl_dynamics_label_pairs(config_json)["train"]
    return icl_dynamics_probe_set(x.astype(np.float32), pairs)


# --------------------------------------------------------------------------------------------
# import


@dataclasses.dataclass
class _Plan:
    folder: Path
    config_json: dict
    model_config: ModelConfig
    task: dict
    checkpoints: list[tuple[int, Path]]
    optimizer_steps: list[int]
    prng_keys: dict[str, dict[str, list[int]]]
    log: dict | None
    source: DataSource


def _plan(folder: Path, data: str | Path | None, exemplars: str | Path | None = None) -> _Plan:
    """Read and validate everything of one run folder; writes nothing."""
    config_json = read_icl_dynamics_config(folder)
    _check_supported(config_json)
    files = checkpoint_files(folder)
    d_in = None
    counts, keys = [], {}
    for step, path in files:
        _, params, optimizer, seeds = load_icl_dynamics_checkpoint(path, config_json, d_in=d_in)
        d_in = params["embed.W_ex"].shape[0]
        counts.append(optimizer["count"])
        keys[str(step)] = seeds
    source = resolve_data_source(config_json, folder, d_in, data=data, exemplars=exemplars)
    log_path = folder / "log.h5"
    log = read_log_h5(log_path) if log_path.exists() else None
    return _Plan(folder, config_json, icl_dynamics_model_config(config_json, d_in=d_in),
                 icl_dynamics_task(config_json, data_section=source.task_data), files, counts, keys, log, source)


def _train_section(cj: dict) -> dict:
    """The original training settings in this project's `train` vocabulary (steps are Adam steps)."""
    bs = int(_cfg(cj, "train_bs"))
    return {"steps": int(_cfg(cj, "train_iters")) // bs, "batch_size": bs, "lr": float(cj.get("lr", float("nan"))),
            "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": float(cj.get("weight_decay") or 0.0),
            "b1": 0.9, "b2": 0.999, "grad_clip": None, "eval_size": int(cj.get("eval_iters") or 0)}


def _run_info(plan: _Plan) -> dict:
    from ..run_info import package_versions

    cj = plan.config_json
    seeds = {"init_seed": int(cj.get("init_seed", 0)), "train_seed": int(cj.get("train_seed", 0)),
             "eval_seed": int(cj.get("eval_seed", 0))}
    steps = [s for s, _ in plan.checkpoints]
    return {
        "source": "icl-dynamics",
        "config": {
            "model": plan.model_config.to_dict(),
            "task": plan.task,
            "seeds": seeds,
            "source": "icl-dynamics",
            "step_unit": "sequences",  # also in config, so that open_scalars shows it as a run coordinate
            "train": _train_section(cj),
            "original_config": cj,
        },
        "model": plan.model_config.to_dict(),
        "seeds": seeds,
        "step_unit": "sequences",
        "sequences_per_optimizer_step": int(_cfg(cj, "train_bs")),
        "steps": steps,
        "optimizer_steps": plan.optimizer_steps,
        "optimizer": {"name": "adam", "lr": float(cj.get("lr", float("nan"))), "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                      "weight_decay": float(cj.get("weight_decay") or 0.0)},
        "checkpoint_prng_keys": plan.prng_keys,
        "probe_data": {"icl_dynamics_exemplar0": plan.source.record()},
        "imported_from": str(plan.folder.resolve()),
        "versions": package_versions(),
    }


def _write(plan: _Plan, out_dir: Path) -> None:
    import store

    specs = _leaf_specs(plan.model_config)
    d_in = plan.model_config.d_in
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = store.ArchiveWriter(out_dir, specs, capacity=max(1, len(plan.checkpoints)))
    for step, path in plan.checkpoints:
        _, params, _, _ = load_icl_dynamics_checkpoint(path, plan.config_json, d_in=d_in)
        archive.write_checkpoint(step, params)
    archive.close()
    (out_dir / EXEMPLAR0_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EXEMPLAR0_FILE, plan.source.exemplar0)
    with store.MetricsWriter(out_dir) as metrics:
        if plan.log is not None:
            for step, row in metric_rows(plan.log, train_bs=int(_cfg(plan.config_json, "train_bs"))):
                metrics.append(step, row)
    store.write_run_json(out_dir, _run_info(plan))  # last: a partial import is not a run directory


def import_icl_dynamics(
    run_folders: list[str | Path], out_dir: str | Path, *, data: str | Path | None = None,
    exemplars: str | Path | None = None,
) -> list[Path]:
    """Import icl-dynamics run folders as run directories; returns the run directories written.

    One folder is written to `out_dir` itself; several go to `out_dir/<folder name>` each.
    Everything (configs, every record of every checkpoint, log.h5, `data`) is validated before
    anything is created, and an existing non-empty target is refused. Steps are training
    sequences (the checkpoint file names); run.json lists `optimizer_steps` (Adam steps), and
    metrics rows carry `optimizer_step`. The exemplars come from `data` (an HDF5 file, or
    "synthetic" for the fixture README's stand-in), `exemplars` (a .npy of the training classes'
    exemplar-0 vectors) or the config's `data_file` if found (`resolve_data_source`; absent: a
    ValueError naming the flags); the vectors the paper's probe needs are stored in the run
    (`probes/icl_dynamics_exemplar0.npy`), so probes rebuild with no flag.
    """
    folders = [Path(f) for f in run_folders]
    if not folders:
        raise ValueError("no icl-dynamics run folders given; pass at least one folder holding config.json")
    out_dir = Path(out_dir)
    targets = [out_dir] if len(folders) == 1 else [out_dir / f.resolve().name for f in folders]
    if len({t.resolve() for t in targets}) != len(targets):
        raise ValueError("two run folders have the same name; import them one at a time with different --out")
    for t in targets:
        if t.exists() and (not t.is_dir() or any(t.iterdir())):
            raise ValueError(f"output directory {t} already exists and is not empty; choose a new --out")
    plans = [_plan(f, data, exemplars) for f in folders]
    for plan, target in zip(plans, targets):  # each built beside its target and renamed into place
        build_atomically(target, lambda tmp, plan=plan: _write(plan, tmp))
    return targets
