"""A checkpoint archive by reference: ``RUN_DIR/checkpoints.ref.json`` names the files outside the run
that hold each checkpoint, read in place (a public checkpoint series is hundreds of GB; copying it
would fill the disk twice).

The manifest records, per step, each file's path, size and the sha256 of its first ``head_bytes``
bytes (for safetensors: the header with every tensor's name, dtype, shape and offsets), and names a
*decoder*, registered by the package that knows the file format (`register_decoder`), which turns a
step's files into the run's leaves. Before a step is read its files are checked against the
manifest, so a file that changed or vanished is named with its step and never read as data.
`ReferencedArchive` reads like `ArchiveReader`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ._described import DescribedCheckpoints
from ._files import atomic_write
from ._schema import nearest_steps
from .errors import StoreError
from .remedies import remedy

__all__ = ["MANIFEST", "Decoder", "register_decoder", "file_reference", "write_manifest", "has_references",
           "ReferencedArchive", "verify_references"]

MANIFEST = "checkpoints.ref.json"
_FORMAT = "referenced-checkpoints"
_VERSION = 1
Decoder = Callable[[list[str], Mapping[str, Any]], Mapping[str, np.ndarray]]
_DECODERS: dict[str, Decoder] = {}
def _reimport() -> str:
    return remedy("reimport")


def register_decoder(name: str, decode: Decoder) -> None:
    """Register ``decode(files, args) -> {leaf name: array}`` under ``name`` (the manifest's ``decoder``)."""
    _DECODERS[name] = decode


def _head_sha256(path: str, head_bytes: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(head_bytes)).hexdigest()


def file_reference(path: str | os.PathLike[str], head_bytes: int) -> dict[str, Any]:
    """The manifest entry of one file: absolute path, size, sha256 of its first ``head_bytes`` bytes."""
    path = os.path.abspath(os.fspath(path))
    return {"path": path, "size": os.path.getsize(path), "head_bytes": int(head_bytes),
            "head_sha256": _head_sha256(path, int(head_bytes))}


def write_manifest(run_dir: str | os.PathLike[str], *, decoder: str, decoder_args: Mapping[str, Any],
                   leaf_specs: Mapping[str, tuple[Sequence[int], str]],
                   checkpoints: Sequence[tuple[int, Sequence[Mapping[str, Any]]]]) -> None:
    """Write the manifest atomically: ``checkpoints`` are (step, [file_reference, ...]) in step order."""
    steps = [int(s) for s, _ in checkpoints]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise StoreError(f"referenced checkpoints must be in increasing step order, got {steps}")
    record = {"format": _FORMAT, "version": _VERSION, "decoder": decoder, "decoder_args": dict(decoder_args),
              "leaves": {n: [list(map(int, s)), str(d)] for n, (s, d) in sorted(leaf_specs.items())},
              "checkpoints": [{"step": int(s), "files": [dict(f) for f in fs]} for s, fs in checkpoints]}
    text = json.dumps(record, indent=1)
    atomic_write(os.path.join(os.fspath(run_dir), MANIFEST), lambda f: f.write(text.encode() + b"\n"))


def has_references(run_dir: str | os.PathLike[str]) -> bool:
    """True if the run's checkpoints are held by reference (a manifest and no archive of its own)."""
    return os.path.isfile(os.path.join(os.fspath(run_dir), MANIFEST))


def _file_problem(step: int, ref: Mapping[str, Any]) -> str | None:
    """One sentence if the file of ``ref`` vanished or differs from what the manifest recorded."""
    path = ref["path"]
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"checkpoint at step {step}: its file '{path}' has vanished; {_reimport()}"
    except OSError as e:
        return f"checkpoint at step {step}: its file '{path}' cannot be read ({e.strerror}); {_reimport()}"
    if size != int(ref["size"]):
        return (f"checkpoint at step {step}: its file '{path}' changed since the import (size {ref['size']} -> "
                f"{size} bytes); {_reimport()}")
    try:
        digest = _head_sha256(path, int(ref["head_bytes"]))
    except OSError as e:
        return f"checkpoint at step {step}: its file '{path}' cannot be read ({e.strerror}); {_reimport()}"
    if digest != ref["head_sha256"]:
        return (f"checkpoint at step {step}: its file '{path}' changed since the import (its header checksum "
                f"differs); {_reimport()}")
    return None


class ReferencedArchive(DescribedCheckpoints):
    """Read checkpoints from the files a manifest references; the interface of `ArchiveReader`."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = os.fspath(run_dir)
        self.root = os.path.join(self.run_dir, MANIFEST)
        try:
            with open(self.root, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("format") != _FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            self._specs = {n: (tuple(int(x) for x in s), str(d)) for n, (s, d) in record["leaves"].items()}
            self._files = {int(c["step"]): list(c["files"]) for c in record["checkpoints"]}
            self._decoder, self._args = str(record["decoder"]), dict(record["decoder_args"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"'{self.root}' is not a readable checkpoint manifest ({e}); import the series "
                             "again") from None
        if int(record.get("version", 0)) > _VERSION:
            raise StoreError(f"'{self.root}' has manifest version {record['version']}, newer than this package "
                             f"reads ({_VERSION}); upgrade the package")
        self._steps = np.array(sorted(self._files), dtype=np.int64)

    def refresh(self) -> None:
        """Nothing to re-read: a referenced series does not grow."""

    def files(self, step: int) -> list[str]:
        """The paths of the files holding checkpoint ``step``."""
        return [f["path"] for f in self._refs(step)]

    def _refs(self, step: int) -> list[dict[str, Any]]:
        step = int(step)
        if step not in self._files:
            raise KeyError(f"step {step} is not a checkpoint of '{self.run_dir}'; "
                           f"{nearest_steps(self._steps, step)}")
        return self._files[step]

    # -- integrity -------------------------------------------------------------------------------------
    def problems(self, step: int) -> list[str]:
        """Sentences naming each file of ``step`` that vanished or changed since the import."""
        return [p for p in (_file_problem(int(step), r) for r in self._refs(step)) if p]

    def verify_checksum(self, step: int) -> bool:
        """True if every file of ``step`` is as the manifest recorded it."""
        return not self.problems(step)

    def damage(self, step: int) -> str | None:
        """None if the files of ``step`` are as recorded, else the first problem's sentence."""
        found = self.problems(step)
        return found[0] if found else None

    def intact(self, step: int, leaves: Mapping[str, np.ndarray], i: int) -> bool:
        """Block readers' check of one loaded step; `load` already refused changed files."""
        return True

    # -- reading ---------------------------------------------------------------------------------------
    def _decode(self, step: int) -> dict[str, np.ndarray]:
        decode = _DECODERS.get(self._decoder)
        if decode is None:
            raise StoreError(f"'{self.root}' needs the checkpoint decoder '{self._decoder}', which no imported "
                             "package registered; import the package that wrote this run (e.g. `import trainer`)")
        found = self.problems(step)
        if found:
            raise StoreError(found[0])
        try:
            leaves = dict(decode(self.files(step), self._args))
        except Exception as e:
            raise StoreError(f"checkpoint at step {step} cannot be decoded from {self.files(step)[0]} "
                             f"({type(e).__name__}: {e}); {_reimport()}") from None
        out = {}
        for name, (shape, dtype) in self._specs.items():
            value = leaves.get(name)
            if value is None or tuple(np.shape(value)) != shape:
                got = "missing" if value is None else f"shape {tuple(np.shape(value))}"
                raise StoreError(f"checkpoint at step {step} decodes leaf '{name}' as {got}, the manifest "
                                 f"records {shape}; {_reimport()}")
            out[name] = np.asarray(value, dtype=dtype)
        return out

    def load(self, step: int) -> dict[str, np.ndarray]:
        """All leaves of the checkpoint at ``step``, decoded from its files (refused if they changed)."""
        return self._decode(step)

    def load_block(self, steps: Sequence[int]) -> dict[str, np.ndarray]:
        """Leaves of several checkpoints stacked on a leading axis."""
        out = {n: np.empty((len(steps), *s), d) for n, (s, d) in self._specs.items()}
        for i, step in enumerate(steps):
            for n, v in self._decode(step).items():
                out[n][i] = v
        return out

    def to_xarray(self, *, steps_per_chunk: int = 1) -> xr.Dataset:
        """Lazy (dask) Dataset: one variable per leaf, dims ``(step, <leaf>_dim0, ...)``; a step's files are
        read when one of its values is computed."""
        import dask
        import dask.array as da

        token = uuid.uuid4().hex[:8]
        load = dask.delayed(self.load, pure=True)
        steps = [int(s) for s in self._steps]
        per_step = {s: load(s, dask_key_name=f"ref-load-{token}-{s}") for s in steps}
        data_vars = {}
        for name, (shape, dtype) in self._specs.items():
            cols = [da.from_delayed(per_step[s][name], shape, dtype=dtype)[None] for s in steps]
            dims = ("step", *(f"{name}_dim{i}" for i in range(len(shape))))
            data_vars[name] = (dims, da.concatenate(cols) if cols else np.zeros((0, *shape), dtype))
        return xr.Dataset(data_vars, coords={"step": self._steps.copy()}, attrs={"source": self.root})


def verify_references(run_dir: str | os.PathLike[str]) -> list[str]:
    """Every referenced file of every step, against its recorded size and header checksum."""
    try:
        archive = ReferencedArchive(run_dir)
    except StoreError as e:
        return [str(e)]
    return [p for step in archive.steps for p in archive.problems(int(step))]
