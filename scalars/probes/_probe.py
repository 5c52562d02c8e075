"""Probes: seeded, stored input batches that derived scalars are measured on.

A probe is a name, a dict of numpy arrays and JSON-able metadata. Token probes hold
`tokens` (B, S) int32; classifier probes hold `examples` (B, P, d_in) float32 and `labels`
(B, P) int32 (the last label is the query's target, never fed in) and optionally
`correct_index` (B,); regression probes hold `xs` (B, K, D) and `ys` (B, K) float32 and
optionally the Bayes baselines' predictions `ridge`, `dmmse` (B, K). `content_hash` (sha256 over array names, dtypes, shapes, bytes and the
metadata) is stored with every result computed on the probe.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types as _pytypes
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.model import model_head

from ._input_kinds import CLASSIFIER, REGRESSION, TOKENS, InputKind, check_token_range, describe_kinds, input_kind_for_head, input_kind_of

if TYPE_CHECKING:
    from trainer.model import ModelConfig

__all__ = ["Probe", "repeated_tokens", "from_tokens", "from_npy", "from_classifier_arrays", "from_regression_arrays",
           "detect_repeat_length", "probe_from_arrays", "read_npz"]



@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """A named batch of model inputs. Build with `repeated_tokens`, `from_tokens`, `from_npy`
    or `from_classifier_arrays`, which validate; the constructor only stores."""

    name: str
    arrays: Mapping[str, Any]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", _pytypes.MappingProxyType(dict(self.arrays)))
        object.__setattr__(self, "metadata", _pytypes.MappingProxyType(dict(self.metadata)))
        if input_kind_of(self.arrays) is None:
            raise ValueError(f"probe '{self.name}' needs the arrays of one input kind ({describe_kinds()}), "
                             f"got {sorted(self.arrays)}")

    @functools.cached_property
    def input_kind(self) -> InputKind:
        """What the arrays are and how a model reads and scores them (`scalars.INPUT_KINDS`)."""
        return input_kind_of(self.arrays)

    @property
    def kind(self) -> str:
        """The input kind's name: 'tokens', 'classifier' or 'regression'."""
        return self.input_kind.name

    @property
    def inputs(self):
        """What the model's forward takes, batched: tokens (B, S), {"examples", "labels"} or {"xs", "ys"}."""
        return self.input_kind.inputs(self.arrays)

    @property
    def batch_size(self) -> int:
        return self.input_kind.batch_size(self.arrays)

    @property
    def seq_len(self) -> int:
        """Positions the model sees: S for tokens, 2P-1 for P classifier items or K regression pairs."""
        return self.input_kind.seq_len(self.arrays)

    @property
    def n_pos(self) -> int:
        """Length of the `pos` dim: every sequence position, except regression probes, whose K
        predictions (context positions k = 0..K-1, at the x tokens) are the positions."""
        return self.input_kind.n_pos(self.arrays)

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 (hex) over array names, dtypes, shapes and bytes, and the metadata."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(np.asarray(self.arrays[name]))
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(json.dumps(dict(self.metadata), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def with_arrays(self, arrays: Mapping[str, Any]) -> "Probe":
        """The same probe holding other (e.g. traced or device) arrays of the same names."""
        return dataclasses.replace(self, arrays=arrays)

    def check(self, config: "ModelConfig") -> None:
        """Raise ValueError if this probe cannot be fed to a model with `config`."""
        want = input_kind_for_head(config.head)
        if self.input_kind is not want:
            raise ValueError(f"probe '{self.name}' holds {self.kind} inputs but the model is a "
                             f"{model_head(config.head).words}; use a {want.name} probe")
        if config.positional == "learned" and self.seq_len > config.n_ctx:
            raise ValueError(f"probe '{self.name}' has sequences of length {self.seq_len}, longer than the model's n_ctx={config.n_ctx}")
        want.check(self, config)

    def __repr__(self) -> str:
        shapes = {k: tuple(np.shape(v)) for k, v in self.arrays.items()}
        return f"Probe({self.name!r}, {shapes}, metadata={dict(self.metadata)})"


def repeated_tokens(*, seed: int = 0, batch: int = 16, T: int = 32, vocab_size: int, bos: int = 0) -> Probe:
    """B sequences: `bos`, then T uniform random non-BOS tokens, then the same T again (S = 2T+1)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 to draw non-BOS tokens, got {vocab_size}")
    if T < 1 or batch < 1:
        raise ValueError(f"batch and T must be positive, got batch={batch}, T={T}")
    if not 0 <= bos < vocab_size:
        raise ValueError(f"bos={bos} is outside the vocabulary 0..{vocab_size - 1}")
    rand = np.random.default_rng(seed).integers(0, vocab_size - 1, size=(batch, T))
    rand = (rand + (rand >= bos)).astype(np.int32)  # skip the BOS id
    tokens = np.concatenate([np.full((batch, 1), bos, np.int32), rand, rand], axis=1)
    meta = {"kind": "repeated_tokens", "seed": seed, "T": T, "bos": bos, "vocab_size": vocab_size}
    return Probe("repeated_tokens", {"tokens": tokens}, meta)


def detect_repeat_length(tokens: np.ndarray) -> int | None:
    """T if every sequence is a first token + T tokens + the same T tokens again (S = 2T+1), else None."""
    tokens = np.asarray(tokens)
    S = tokens.shape[-1]
    if S < 3 or S % 2 == 0:
        return None
    T = (S - 1) // 2
    return T if np.array_equal(tokens[:, 1:T + 1], tokens[:, T + 1:]) else None


def from_tokens(tokens, *, name: str = "tokens", T: int | None = None, vocab_size: int | None = None,
                metadata: Mapping[str, Any] | None = None) -> Probe:
    """A token probe from an int array (B, S). Sequences that are BOS + a segment of length T +
    the same segment (S = 2T+1) get `T` in their metadata, so repeat-based types (induction_score,
    ...) can use them; pass `T` to require that layout."""
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise ValueError(f"token probe '{name}' must have shape (batch, seq), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token probe '{name}' must hold integer token ids, got dtype {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"token probe '{name}' needs at least one sequence of two tokens, got shape {arr.shape}")
    check_token_range(arr, vocab_size, f"token probe '{name}'")
    meta = dict(metadata or {})
    if T is not None:
        if arr.shape[1] != 2 * T + 1:
            raise ValueError(f"token probe '{name}' with T={T} must have 2T+1={2 * T + 1} positions, got {arr.shape[1]}")
        if detect_repeat_length(arr) != T:
            raise ValueError(f"token probe '{name}' with T={T}: positions 1..T and T+1..2T must hold the same tokens")
        meta["T"] = int(T)
    elif "T" not in meta and detect_repeat_length(arr) is not None:
        meta["T"] = detect_repeat_length(arr)
    return Probe(name, {"tokens": arr.astype(np.int32)}, meta)


def from_npy(path: str | Path, *, name: str | None = None, T: int | None = None, vocab_size: int | None = None) -> Probe:
    """A token probe from a `.npy` file of int token ids (B, S); see `from_tokens` (T detected)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"probe file {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"probe file {str(path)!r} is not a readable .npy array ({e})") from None
    return from_tokens(arr, name=name or path.stem, T=T, vocab_size=vocab_size, metadata={"source": path.name})


def from_classifier_arrays(
    examples, labels, correct_index=None, *, name: str = "classifier", metadata: Mapping[str, Any] | None = None,
    **extra,
) -> Probe:
    """A classifier probe: `examples` (B, P, d_in), `labels` (B, P) (last = query target) and
    optionally `correct_index` (B,) (which context item has the query's class, for
    induction_strength). Extra arrays (e.g. `classes`) are kept and hashed."""
    ex = np.asarray(examples, np.float32)
    lab = np.asarray(labels)
    if ex.ndim != 3:
        raise ValueError(f"classifier probe '{name}': examples must have shape (batch, items, d_in), got {ex.shape}")
    if lab.ndim != 2 or lab.shape != ex.shape[:2]:
        raise ValueError(f"classifier probe '{name}': labels must have shape {ex.shape[:2]}, got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"classifier probe '{name}': labels must be integers, got dtype {lab.dtype}")
    arrays: dict[str, np.ndarray] = {"examples": ex, "labels": lab.astype(np.int32)}
    if correct_index is not None:
        ci = np.asarray(correct_index)
        if ci.shape != (ex.shape[0],) or not np.issubdtype(ci.dtype, np.integer):
            raise ValueError(f"classifier probe '{name}': correct_index must be ints of shape ({ex.shape[0]},), got {ci.dtype} {ci.shape}")
        arrays["correct_index"] = ci.astype(np.int32)
    for key, value in extra.items():
        arrays[key] = np.asarray(value)
    return Probe(name, arrays, dict(metadata or {}))


def from_regression_arrays(xs, ys, *, name: str = "regression", metadata: Mapping[str, Any] | None = None,
                           **extra) -> Probe:
    """A regression probe: `xs` (B, K, D), `ys` (B, K) and optional per-position arrays such as the
    baselines' predictions `ridge`, `dmmse` (B, K); every array is kept and hashed."""
    x, y = np.asarray(xs, np.float32), np.asarray(ys, np.float32)
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"regression probe '{name}': xs must be (batch, K, D) and ys (batch, K), got {x.shape} "
                         f"and {y.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"regression probe '{name}' needs at least one sequence of one pair, got xs {x.shape}")
    arrays: dict[str, np.ndarray] = {"xs": x, "ys": y}
    for key, value in extra.items():
        value = np.asarray(value, np.float32)
        if value.shape[:1] != (x.shape[0],):
            raise ValueError(f"regression probe '{name}': array '{key}' must have {x.shape[0]} rows, got {value.shape}")
        arrays[key] = value
    return Probe(name, arrays, dict(metadata or {}))


# how each input kind's arrays become a validated probe (the one loader of probe arrays and files)
_FROM_ARRAYS = {
    TOKENS.name: lambda arrays, name, metadata: from_tokens(arrays["tokens"], name=name, metadata=metadata),
    CLASSIFIER.name: lambda arrays, name, metadata: from_classifier_arrays(name=name, metadata=metadata, **arrays),
    REGRESSION.name: lambda arrays, name, metadata: from_regression_arrays(name=name, metadata=metadata, **arrays),
}


def probe_from_arrays(arrays: Mapping[str, Any], *, name: str, metadata: Mapping[str, Any] | None = None) -> Probe:
    """A validated probe of the input kind whose arrays `arrays` holds (`input_kind_of`)."""
    kind = input_kind_of(arrays)
    if kind is None:
        raise ValueError(f"probe '{name}' holds arrays {sorted(arrays)}; a probe holds {describe_kinds()}")
    return _FROM_ARRAYS[kind.name](dict(arrays), name, metadata)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a probe .npz; one sentence for a file that is not a numpy .npz archive."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError):
        raise ValueError(f"probe file '{path}' is not a numpy .npz archive (np.savez writes one)") from None
