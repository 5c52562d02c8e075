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

if TYPE_CHECKING:
    from trainer.model import ModelConfig

__all__ = ["Probe", "repeated_tokens", "from_tokens", "from_npy", "from_classifier_arrays", "from_regression_arrays",
           "detect_repeat_length"]

TOKENS = "tokens"
CLASSIFIER = "classifier"
REGRESSION = "regression"


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
        if "tokens" not in self.arrays and not {"examples", "labels"} <= set(self.arrays) \
                and not {"xs", "ys"} <= set(self.arrays):
            raise ValueError(
                f"probe '{self.name}' needs a 'tokens' array (token models), 'examples' and 'labels' "
                f"arrays (classifiers) or 'xs' and 'ys' arrays (regression), got {sorted(self.arrays)}"
            )

    @property
    def kind(self) -> str:
        """'tokens', 'classifier' or 'regression'."""
        if "tokens" in self.arrays:
            return TOKENS
        return REGRESSION if "xs" in self.arrays else CLASSIFIER

    @property
    def inputs(self):
        """What the model's forward takes, batched: tokens (B, S), {"examples", "labels"} or {"xs", "ys"}."""
        if self.kind == TOKENS:
            return self.arrays["tokens"]
        if self.kind == REGRESSION:
            return {"xs": self.arrays["xs"], "ys": self.arrays["ys"]}
        return {"examples": self.arrays["examples"], "labels": self.arrays["labels"]}

    @property
    def batch_size(self) -> int:
        return int(self.arrays[{TOKENS: "tokens", CLASSIFIER: "labels", REGRESSION: "ys"}[self.kind]].shape[0])

    @property
    def seq_len(self) -> int:
        """Positions the model sees: S for tokens, 2P-1 for P classifier items or K regression pairs."""
        if self.kind == TOKENS:
            return int(self.arrays["tokens"].shape[1])
        return 2 * int(self.arrays["ys" if self.kind == REGRESSION else "labels"].shape[1]) - 1

    @property
    def n_pos(self) -> int:
        """Length of the `pos` dim: every sequence position, except regression probes, whose K
        predictions (context positions k = 0..K-1, at the x tokens) are the positions."""
        return int(self.arrays["ys"].shape[1]) if self.kind == REGRESSION else self.seq_len

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
        want = {"lm": TOKENS, "classifier": CLASSIFIER, "regression": REGRESSION}[config.head]
        if self.kind != want:
            model = {TOKENS: "token language model", CLASSIFIER: "sequence classifier",
                     REGRESSION: "regression model"}[want]
            raise ValueError(f"probe '{self.name}' holds {self.kind} inputs but the model is a {model}; use a {want} probe")
        if config.positional == "learned" and self.seq_len > config.n_ctx:
            raise ValueError(f"probe '{self.name}' has sequences of length {self.seq_len}, longer than the model's n_ctx={config.n_ctx}")
        if self.kind == TOKENS:
            _check_token_range(np.asarray(self.arrays["tokens"]), config.vocab_size, f"probe '{self.name}'")
        elif self.kind == REGRESSION:
            if np.shape(self.arrays["xs"])[-1] + 1 != config.d_in:
                raise ValueError(f"probe '{self.name}' has x of size {np.shape(self.arrays['xs'])[-1]}, the model "
                                 f"expects d_in - 1 = {config.d_in - 1}")
        else:
            ex, lab = np.asarray(self.arrays["examples"]), np.asarray(self.arrays["labels"])
            if ex.shape[-1] != config.d_in:
                raise ValueError(f"probe '{self.name}' has exemplars of size {ex.shape[-1]}, the model expects d_in={config.d_in}")
            if lab.size and (lab.min() < 0 or lab.max() >= config.n_labels):
                raise ValueError(
                    f"probe '{self.name}' has labels in [{lab.min()}, {lab.max()}], the model has n_labels={config.n_labels}"
                )

    def __repr__(self) -> str:
        shapes = {k: tuple(np.shape(v)) for k, v in self.arrays.items()}
        return f"Probe({self.name!r}, {shapes}, metadata={dict(self.metadata)})"


def _check_token_range(tokens: np.ndarray, vocab_size: int | None, what: str) -> None:
    if vocab_size is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
        raise ValueError(
            f"{what} has token ids outside the vocabulary 0..{vocab_size - 1} (e.g. {int(bad.flat[0])}); "
            "check that the tokens belong to this model"
        )


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
    _check_token_range(arr, vocab_size, f"token probe '{name}'")
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


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a probe .npz; one sentence for a file that is not a numpy .npz archive."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError):
        raise ValueError(f"probe file '{path}' is not a numpy .npz archive (np.savez writes one)") from None
