"""`.eqx` checkpoints: NPY records back to back, named from the config (`eqx_record_layout`) and checked."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._config import _ADAM, _SEEDS, _cfg, _check_supported, _mlp_hidden


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
