"""Files of a Hugging Face checkpoint directory: config.json and (sharded) safetensors, read and written.

Headers are read without tensor data so that a whole series of directories is validated before
an import writes anything; directories are built beside their destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from store import file_mode

__all__ = ["CONFIG_JSON", "WEIGHTS", "tensor_headers", "read_checkpoint_dir", "weight_files", "header_bytes",
           "read_weight_files", "is_pickle", "step_from_name", "step_pattern",
           "write_checkpoint_dir", "build_atomically"]

CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
_STEP_NAME = re.compile(r"(?:step|checkpoint|ckpt)[-_]?(\d+)$", re.IGNORECASE)
Headers = dict[str, tuple[tuple[int, ...], str, str]]  # name -> (shape, safetensors dtype, file)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{path}' is not valid JSON ({exc}); re-export the checkpoint") from None
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' does not hold a JSON object; re-export the checkpoint")
    return data


def _weight_files(d: Path) -> list[Path]:
    if (d / WEIGHTS).is_file():
        return [d / WEIGHTS]
    if (d / INDEX).is_file():
        index = _read_json(d / INDEX)
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index.get("weight_map"), dict) else []
        if not shards:
            raise ValueError(f"'{d / INDEX}' has no weight_map; re-export the checkpoint")
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise FileNotFoundError(f"'{d / missing[0]}', named in '{d / INDEX}', does not exist; copy the "
                                    "complete checkpoint directory")
        return [d / s for s in shards]
    if (d / PICKLE_INDEX).is_file() or (d / PICKLE).is_file():
        if _torch() is None:
            name = PICKLE_INDEX if (d / PICKLE_INDEX).is_file() else PICKLE
            raise ValueError(f"'{d}' has only {name} (a pickle, which needs torch to load, and torch is not "
                             "installed); install torch (the [bench] extra) or convert it to safetensors: load it "
                             "with transformers and save_pretrained(..., safe_serialization=True)")
        if (d / PICKLE).is_file():
            return [d / PICKLE]
        index = _read_json(d / PICKLE_INDEX)
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index.get("weight_map"), dict) else []
        missing = [s for s in shards if not (d / s).is_file()]
        if not shards or missing:
            raise FileNotFoundError(f"'{d / (missing or ['its weight_map'])[0]}', named in '{d / PICKLE_INDEX}', does "
                                    "not exist; copy the complete checkpoint directory")
        return [d / s for s in shards]
    pickles = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt"))
    if pickles:
        raise ValueError(f"'{d}' has only {pickles[0]} (a pickle, not a Hugging Face weights file); convert it "
                         "to safetensors: load it with transformers and save_pretrained(..., safe_serialization=True)")
    raise FileNotFoundError(f"'{d}' has no {WEIGHTS}; pass Hugging Face checkpoint directories "
                            f"({CONFIG_JSON} + {WEIGHTS})")


def _torch() -> Any:
    """The torch module if installed (it reads pickle checkpoints), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def is_pickle(file: str | os.PathLike[str]) -> bool:
    """True for a torch pickle weights file (``pytorch_model*.bin``)."""
    return os.fspath(file).endswith(".bin")


def load_pickle(file: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a ``pytorch_model.bin`` as numpy (torch's safe ``weights_only`` loader; bfloat16 widened
    exactly to float32)."""
    torch = _torch()
    try:
        state = torch.load(os.fspath(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"'{file}' is not a readable torch checkpoint ({type(exc).__name__}: {exc}); copy the "
                         "checkpoint again or convert it to safetensors") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"'{file}' does not hold a state dict of tensors; save it with save_pretrained")
    return {str(k): (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def _checkpoint_dir(d: str | os.PathLike[str]) -> Path:
    path = Path(d)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory '{path}' does not exist; pass Hugging Face checkpoint "
                                f"directories ({CONFIG_JSON} + {WEIGHTS})")
    if not (path / CONFIG_JSON).is_file():
        raise FileNotFoundError(f"'{path}' has no {CONFIG_JSON}; pass Hugging Face checkpoint directories "
                                f"({CONFIG_JSON} + {WEIGHTS})")
    return path


def tensor_headers(d: str | os.PathLike[str]) -> tuple[dict[str, Any], Headers, str]:
    """(config.json, name -> (shape, dtype, file) of every tensor, the weights file(s)) without reading data."""
    from safetensors import SafetensorError, safe_open

    path = _checkpoint_dir(d)
    config = _read_json(path / CONFIG_JSON)
    headers: Headers = {}
    files = _weight_files(path)
    for file in files:
        if is_pickle(file):  # no header to read without loading: load it
            for name, value in load_pickle(file).items():
                if name in headers:
                    raise ValueError(f"tensor '{name}' is in both '{headers[name][2]}' and '{file}'; "
                                     "re-export the checkpoint")
                headers[name] = (tuple(value.shape), _SAFETENSORS_DTYPE.get(value.dtype.str, value.dtype.str),
                                 str(file))
            continue
        check_not_truncated(file)
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    if name in headers:
                        raise ValueError(f"tensor '{name}' is in both '{headers[name][2]}' and '{file}'; "
                                         "re-export the checkpoint")
                    sl = f.get_slice(name)
                    headers[name] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()), str(file))
        except SafetensorError as exc:
            raise ValueError(f"'{file}' is not a readable safetensors file ({exc}); re-export the checkpoint") from None
    return config, headers, str(files[0]) if len(files) == 1 else str(path / INDEX)


_SAFETENSORS_DTYPE = {"<f8": "F64", "<f4": "F32", "<f2": "F16"}
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
                 "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _raw_header(file: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and the offset its tensor data starts at."""
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or n > os.path.getsize(file) - 8:
            raise ValueError(f"'{file}' is not a readable safetensors file (no complete header); re-export the "
                             "checkpoint")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"'{file}' is not a readable safetensors file (its header is not JSON); re-export the "
                             "checkpoint") from None
    return (header if isinstance(header, dict) else {}), 8 + n


def check_not_truncated(file: Path) -> None:
    """Refuse a safetensors file shorter than its header says (a copy or download cut short)."""
    header, start = _raw_header(file)
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    want, got = start + max(ends, default=0), os.path.getsize(file)
    if got < want:
        raise ValueError(f"'{file}' is truncated: its header describes {want} bytes but the file has {got}; "
                         "copy the checkpoint again")


def load_safetensors(file: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as numpy, dtypes as stored except bfloat16 (numpy has
    none), which is widened exactly to float32."""
    file = Path(file)
    check_not_truncated(file)
    header, start = _raw_header(file)
    data = np.memmap(file, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec.get("dtype") not in _NUMPY_DTYPES:
            raise ValueError(f"tensor '{name}' in '{file}' has dtype {spec.get('dtype')}, which this importer "
                             "cannot read; save float32, float16 or bfloat16 weights")
        lo, hi = (start + int(x) for x in spec["data_offsets"])
        arr = np.frombuffer(data[lo:hi].tobytes(), dtype=_NUMPY_DTYPES[spec["dtype"]]).reshape(spec["shape"])
        if spec["dtype"] == "BF16":  # the top 16 bits of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def weight_files(d: str | os.PathLike[str]) -> list[Path]:
    """The safetensors file(s) of a checkpoint directory (every shard an index names)."""
    return _weight_files(_checkpoint_dir(d))


def header_bytes(file: str | os.PathLike[str]) -> int:
    """Length of a safetensors file's header (8 + its JSON): the part naming every tensor and offset."""
    return _raw_header(Path(file))[1]


def read_weight_files(files: list[str | os.PathLike[str]]) -> dict[str, np.ndarray]:
    """Every tensor of the given safetensors files as numpy arrays (bfloat16 as float32)."""
    out: dict[str, np.ndarray] = {}
    for file in files:
        out.update(load_pickle(file) if is_pickle(file) else load_safetensors(file))
    return out


def read_checkpoint_dir(d: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory (all shards) as numpy arrays (bfloat16 as float32)."""
    return read_weight_files(weight_files(d))


def step_pattern(text: str) -> re.Pattern[str]:
    """A ``--step-pattern`` regex: it must compile and have exactly one group, the step's digits."""
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ValueError(f"--step-pattern {text!r} is not a regular expression ({exc}); pass one with a group "
                         r"for the step, e.g. 'iter_(\d+)_final'") from None
    if pattern.groups != 1:
        raise ValueError(f"--step-pattern {text!r} has {pattern.groups} groups; it needs exactly one, around the "
                         r"step's digits, e.g. 'iter_(\d+)_final'")
    return pattern


def step_from_name(d: str | os.PathLike[str], provenance: Any = None,
                   pattern: re.Pattern[str] | None = None) -> int:
    """The step of a checkpoint directory: from ``pattern``'s group if given (it must match), else from its
    name (``step-1000``, ``checkpoint-1000``, any name with exactly one integer), else our record."""
    name = Path(d).resolve().name
    if pattern is not None:
        found = pattern.search(name)
        if not found or not (found.group(1) or "").isdigit():
            raise ValueError(f"'{d}': its name {name!r} does not match --step-pattern {pattern.pattern!r} with "
                             "digits in the group; fix the pattern or pass --steps")
        return int(found.group(1))
    match = _STEP_NAME.search(name)
    if match:
        return int(match.group(1))
    numbers = re.findall(r"\d+", name)
    if len(numbers) == 1:  # any other name with exactly one integer: step1000, iter_2000, 3000
        return int(numbers[0])
    if isinstance(provenance, Mapping) and isinstance(provenance.get("step"), int):
        return int(provenance["step"])
    raise ValueError(f"cannot tell the step of '{d}': name the directory like step-1000 or checkpoint-1000 "
                     "(one integer in the name), or pass --steps")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete the ``.NAME.PID.*.partial`` folders beside ``out`` that a killed build left (their
    process is gone); returns them."""
    stale = []
    for p in out.parent.glob(f".{out.name}.*.partial") if out.parent.is_dir() else []:
        parts = p.name[len(out.name) + 2:].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(p, ignore_errors=True)
            stale.append(p)
    return stale


def build_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Run ``fill(tmp)`` on a fresh directory beside ``out``, then rename it to ``out`` (gone on failure,
    and removed by the next build if a kill left it). Files inside get the mode a plain ``open`` gives."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' already exists and is not empty; pass a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, file_mode() | ((file_mode() & 0o444) >> 2))  # rwx where the umask lets rw
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, file_mode())
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_checkpoint_dir(out: str | os.PathLike[str], config: Mapping[str, Any],
                         tensors: Mapping[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (metadata format "pt", as transformers expects)."""
    from safetensors.numpy import save_file

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_JSON).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(dict(tensors), tmp / WEIGHTS, metadata={"format": "pt"})

    build_atomically(Path(out), fill)
