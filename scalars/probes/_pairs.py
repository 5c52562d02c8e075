"""Paired probes for patching: clean and corrupted inputs of one shape, plus where the metric reads.

A pair (`PairProbe`) holds the clean inputs (`tokens`, or `examples` and `labels`), the corrupted
ones (`corrupt_tokens`, or `corrupt_examples` and `corrupt_labels`), and for the metric
`answer_pos` (B, K) positions whose logits are scored, `answers` (B, K) the correct token/label
there and `wrong_answers` (B, K) the wrong one (logit difference); metadata `metric` is one of
`METRICS`. Built-ins: `induction_pair` (repeated tokens vs the second repeat shuffled) and
`classifier_label_swap_pair` (the query's label swapped with another context label).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from ._input_kinds import CLASSIFIER, TOKENS, input_kind_of
from ._probe import Probe, from_tokens, repeated_tokens

if TYPE_CHECKING:
    from trainer.model import ModelConfig

__all__ = [
    "METRICS", "PairProbe", "is_pair", "check_metric", "induction_pair", "pair_from_repeated",
    "classifier_label_swap_pair", "pair_from_arrays", "pair_from_npy", "as_pair", "corrupt_inputs", "metric_name",
]

METRICS = ("loss", "logit_diff", "accuracy")
ANSWER_ARRAYS = ("answer_pos", "answers", "wrong_answers")
SHUFFLE_SEED = 0  # the fixed shuffle of the induction corruption (a plain repeated probe gets the same)


def check_metric(metric: Any, what: str) -> str:
    """`metric` if it is one of METRICS, else a ValueError naming `what` and the choices."""
    if metric not in METRICS:
        raise ValueError(f"{what}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def is_pair(probe: Probe) -> bool:
    """Whether `probe` carries corrupted inputs and answers (a paired probe)."""
    corrupt = probe.input_kind.corrupt
    return bool(corrupt) and all(k in probe.arrays for k in (*corrupt, *ANSWER_ARRAYS))


def corrupt_inputs(probe: Probe):
    """The corrupted inputs of a paired probe, batched like `probe.inputs`."""
    return probe.input_kind.corrupt_inputs(probe.arrays)


def metric_name(probe: Probe) -> str:
    """The metric a paired probe declares (default logit_diff)."""
    return probe.metadata.get("metric", "logit_diff")


@dataclasses.dataclass(frozen=True, eq=False)
class PairProbe(Probe):
    """A probe with a corrupted twin of its inputs and the metric's answers; build with the
    functions of this module, which validate (`check` validates again against a model)."""

    @property
    def corrupt_inputs(self):
        """The corrupted inputs, batched like `inputs`."""
        return corrupt_inputs(self)

    @property
    def metric(self) -> str:
        return metric_name(self)

    def check(self, config: "ModelConfig") -> None:
        """ValueError if this pair cannot be fed to a model with `config` (shapes, ids, metric)."""
        super().check(config)
        _validate(self.arrays, self.name, self.metric, self.input_kind.n_outputs(config), self.seq_len)


def _validate(arrays: Mapping[str, Any], name: str, metric: str, n_outputs: int | None, seq_len: int) -> None:
    """Host-side checks of a pair's arrays (numpy)."""
    check_metric(metric, f"paired probe '{name}'")
    kind = input_kind_of(arrays)
    pairs = list(zip(kind.arrays, kind.corrupt)) if kind is not None else []
    if not pairs:
        raise ValueError(f"paired probe '{name}' holds {kind.name if kind else 'no'} inputs, which have no "
                         "corrupted form; pairs are token or classifier probes")
    for clean_key, corrupt_key in pairs:
        if corrupt_key not in arrays:
            raise ValueError(f"paired probe '{name}' has no '{corrupt_key}' array; build it with induction_pair, "
                             "classifier_label_swap_pair or pair_from_arrays")
        a, b = np.shape(arrays[clean_key]), np.shape(arrays[corrupt_key])
        if a != b:
            raise ValueError(f"paired probe '{name}': clean {clean_key} have shape {a} but corrupted ones {b}; "
                             "clean and corrupted inputs must have the same shape")
    batch = np.shape(arrays[pairs[0][0]])[0]
    shapes = {k: np.shape(arrays[k]) if k in arrays else None for k in ANSWER_ARRAYS}
    if None in shapes.values() or len(set(shapes.values())) != 1 or len(shapes["answers"]) != 2 \
            or shapes["answers"][0] != batch:
        raise ValueError(f"paired probe '{name}': answer_pos, answers and wrong_answers must all have shape "
                         f"(batch={batch}, K), got {shapes}")
    pos = np.asarray(arrays["answer_pos"])
    if pos.size and (pos.min() < 0 or pos.max() >= seq_len):
        raise ValueError(f"paired probe '{name}': answer positions must lie in 0..{seq_len - 1}, got "
                         f"{int(pos.min())}..{int(pos.max())}")
    if n_outputs is not None:
        corrupt = arrays.get("corrupt_tokens", arrays.get("corrupt_labels"))
        what = "token ids" if "tokens" in arrays else "labels"
        for key, arr in (("corrupt_" + ("tokens" if "tokens" in arrays else "labels"), corrupt),
                         ("answers", arrays["answers"]), ("wrong_answers", arrays["wrong_answers"])):
            arr = np.asarray(arr)
            if arr.size and (arr.min() < 0 or arr.max() >= n_outputs):
                bad = arr[(arr < 0) | (arr >= n_outputs)]
                raise ValueError(f"paired probe '{name}': {key} hold {what} outside the model's 0..{n_outputs - 1} "
                                 f"(e.g. {int(bad.flat[0])}); use ids the model can output")


def _ints(x) -> np.ndarray:
    return np.asarray(x).astype(np.int32)


# -- the induction pair ----------------------------------------------------------------------
def _cyclic_shuffles(batch: int, T: int, seed: int) -> np.ndarray:
    """(batch, T) index maps, each one random T-cycle (a shuffle that moves every position)."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, T), np.int32)
    for b in range(batch):
        order = rng.permutation(T)
        out[b, order] = np.roll(order, -1)
    return out


def induction_corruption(tokens, T: int, *, seed: int = SHUFFLE_SEED) -> dict[str, Any]:
    """Corrupted tokens (second repeat shuffled by a fixed random cycle per sequence) and the answers:
    positions T+1..2T-1 predicting the clean next token, wrong answer the corrupted next token.

    Works on numpy arrays and on traced JAX arrays (the shuffle depends only on shapes and `seed`).
    """
    xp = np if isinstance(tokens, np.ndarray) else jnp
    B = tokens.shape[0]
    idx = _cyclic_shuffles(B, T, seed)
    second = xp.take_along_axis(tokens[:, T + 1:], xp.asarray(idx), axis=1)
    corrupt = xp.concatenate([tokens[:, :T + 1], second], axis=1)
    pos = np.broadcast_to(np.arange(T + 1, 2 * T, dtype=np.int32), (B, T - 1))
    return {"corrupt_tokens": corrupt, "answer_pos": xp.asarray(pos), "answers": tokens[:, T + 2:],
            "wrong_answers": corrupt[:, T + 2:]}


def pair_from_repeated(probe: Probe, *, metric: str = "logit_diff", name: str | None = None,
                       seed: int = SHUFFLE_SEED) -> PairProbe:
    """The induction pair of a repeated-token probe (metadata T, S = 2T+1): see `induction_corruption`."""
    T = probe.metadata.get("T") if probe.input_kind is TOKENS else None
    if T is None:
        raise ValueError(f"probe '{probe.name}' is not a repeated-token probe (BOS + T tokens + the same T); the "
                         "induction pair shuffles the second repeat, so build it from repeated_tokens")
    if int(T) < 2:
        raise ValueError(f"the induction pair needs a repeat length T >= 2 to shuffle, probe '{probe.name}' has T={T}")
    check_metric(metric, "induction pair")
    tokens = probe.arrays["tokens"]
    extra = induction_corruption(tokens, int(T), seed=seed)
    if isinstance(tokens, np.ndarray):
        extra = {k: _ints(v) for k, v in extra.items()}
    meta = {**probe.metadata, "pair": "induction", "metric": metric, "shuffle_seed": seed}
    return PairProbe(name or probe.name, {**probe.arrays, **extra}, meta)


def induction_pair(*, seed: int = 0, batch: int = 16, T: int = 32, vocab_size: int, bos: int = 0,
                   metric: str = "logit_diff") -> PairProbe:
    """Repeated tokens (BOS + T random tokens + the same T) vs the same with the second repeat shuffled."""
    base = repeated_tokens(seed=seed, batch=batch, T=T, vocab_size=vocab_size, bos=bos)
    return pair_from_repeated(base, metric=metric, name="induction_pair")


# -- the classifier label swap ---------------------------------------------------------------
def label_swap_corruption(labels, n_labels: int) -> dict[str, Any]:
    """Context labels with the query's label y and another label y' exchanged (y' = the first
    context label != y, else (y+1) mod n_labels); answers y, wrong answers y' at the query."""
    xp = np if isinstance(labels, np.ndarray) else jnp
    B, P = labels.shape
    context, y = labels[:, :-1], labels[:, -1]
    other = context != y[:, None]
    first = xp.argmax(other, axis=1)
    y2 = xp.where(other.any(1), xp.take_along_axis(context, first[:, None], axis=1)[:, 0], (y + 1) % n_labels)
    swapped = xp.where(context == y[:, None], y2[:, None], xp.where(context == y2[:, None], y[:, None], context))
    corrupt = xp.concatenate([swapped, y[:, None]], axis=1).astype(labels.dtype)
    pos = np.full((B, 1), 2 * P - 2, np.int32)
    return {"corrupt_labels": corrupt, "answer_pos": xp.asarray(pos), "answers": y[:, None],
            "wrong_answers": y2[:, None]}


def classifier_label_swap_pair(probe: Probe, *, n_labels: int, metric: str = "logit_diff",
                               name: str = "label_swap_pair") -> PairProbe:
    """A classifier probe vs the same sequences with the query's label swapped with another context
    label in the context (exemplars unchanged): in-context learning then points at the wrong label."""
    if probe.input_kind is not CLASSIFIER:
        raise ValueError(f"the label-swap pair needs a classifier probe (examples, labels); '{probe.name}' "
                         "holds tokens")
    if n_labels < 2:
        raise ValueError(f"the label-swap pair needs at least 2 labels, got n_labels={n_labels}")
    check_metric(metric, "label-swap pair")
    labels = np.asarray(probe.arrays["labels"])
    if labels.shape[1] < 2:
        raise ValueError(f"probe '{probe.name}' has no context items to swap labels in (one item per sequence)")
    extra = {k: _ints(v) for k, v in label_swap_corruption(labels, n_labels).items()}
    extra["corrupt_examples"] = np.asarray(probe.arrays["examples"])
    arrays = {**probe.arrays, **extra}
    meta = {**probe.metadata, "pair": "label_swap", "metric": metric, "source_probe": probe.name}
    pair = PairProbe(name, arrays, meta)
    _validate(arrays, name, metric, n_labels, pair.seq_len)
    return pair


def _derive_classifier(probe: Probe, n_labels: int, metric: str) -> PairProbe:
    extra = label_swap_corruption(probe.arrays["labels"], n_labels)
    extra["corrupt_examples"] = probe.arrays["examples"]
    return PairProbe(probe.name, {**probe.arrays, **extra}, {**probe.metadata, "pair": "label_swap", "metric": metric})


# how a plain probe of each input kind becomes the pair patching reads (None: it cannot)
_DERIVED_PAIRS: dict[str, Callable[[Probe, "ModelConfig"], "PairProbe | None"]] = {
    TOKENS.name: lambda probe, config: (pair_from_repeated(probe, name=probe.name)
                                        if probe.metadata.get("T") is not None else None),
    CLASSIFIER.name: lambda probe, config: _derive_classifier(probe, config.n_labels, "logit_diff"),
}


def as_pair(probe: Probe, config: "ModelConfig", type_name: str) -> Probe:
    """The pair a patching type reads: `probe` itself if paired; a plain repeated-token probe gets
    the induction corruption, a plain classifier probe the label swap (same as the builders)."""
    if is_pair(probe):
        return probe
    derive = _DERIVED_PAIRS.get(probe.input_kind.name)
    pair = derive(probe, config) if derive is not None else None
    if pair is not None:
        return pair
    raise ValueError(f"type '{type_name}' needs a paired probe (clean and corrupted inputs); probe '{probe.name}' is "
                     "neither a pair nor repeated tokens; use --probe induction_pair or pair_from_arrays")


# -- user pairs ------------------------------------------------------------------------------
def pair_from_arrays(clean, corrupt, *, answer_pos=None, answers=None, wrong_answers=None, metric: str = "loss",
                     vocab_size: int | None = None, name: str = "pair",
                     metadata: Mapping[str, Any] | None = None) -> PairProbe:
    """A token pair from int arrays (B, S). The metric reads `answer_pos` (K,) or (B, K) (default:
    every position 0..S-2); `answers` default to the clean next tokens, `wrong_answers` to the
    corrupted next tokens. `vocab_size` checks every id."""
    base = from_tokens(clean, name=name, vocab_size=vocab_size, metadata=metadata)
    clean = np.asarray(base.arrays["tokens"])
    corrupt = np.asarray(corrupt)
    if corrupt.shape != clean.shape:
        raise ValueError(f"paired probe '{name}': clean tokens have shape {clean.shape} but corrupted tokens "
                         f"{corrupt.shape}; clean and corrupted inputs must have the same shape")
    if not np.issubdtype(corrupt.dtype, np.integer):
        raise ValueError(f"paired probe '{name}': corrupted tokens must be integer ids, got dtype {corrupt.dtype}")
    B, S = clean.shape
    pos = np.arange(S - 1) if answer_pos is None else np.asarray(answer_pos)
    if pos.ndim == 1:
        pos = np.broadcast_to(pos, (B, pos.shape[0]))
    if pos.ndim != 2 or pos.shape[0] != B or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"paired probe '{name}': answer_pos must be integer positions of shape (K,) or ({B}, K), "
                         f"got {pos.dtype} {pos.shape}")
    needs_next = answers is None or wrong_answers is None
    if needs_next and pos.size and (pos.min() < 0 or pos.max() >= S - 1):
        raise ValueError(f"paired probe '{name}': default answers are the next tokens, so answer positions must lie "
                         f"in 0..{S - 2}; got {int(pos.min())}..{int(pos.max())} (or pass answers and wrong_answers)")
    nxt = np.minimum(pos + 1, S - 1)
    answers = np.take_along_axis(clean, nxt, 1) if answers is None else np.broadcast_to(np.asarray(answers), pos.shape)
    wrong = np.take_along_axis(corrupt, nxt, 1) if wrong_answers is None else np.broadcast_to(
        np.asarray(wrong_answers), pos.shape)
    arrays = {"tokens": clean, "corrupt_tokens": _ints(corrupt), "answer_pos": _ints(pos), "answers": _ints(answers),
              "wrong_answers": _ints(wrong)}
    _validate(arrays, name, metric, vocab_size, S)
    return PairProbe(name, arrays, {**base.metadata, "pair": "user", "metric": metric})


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{what} file {str(path)!r} is not a readable .npy array ({e})") from None


def pair_from_npy(clean_path: str | Path, corrupt_path: str | Path, *, name: str | None = None,
                  **kwargs) -> PairProbe:
    """A token pair from two `.npy` files of int token ids (B, S); see `pair_from_arrays`."""
    clean = _load_npy(clean_path, "clean probe")
    corrupt = _load_npy(corrupt_path, "corrupted probe")
    kwargs.setdefault("metadata", {"source": f"{Path(clean_path).name},{Path(corrupt_path).name}"})
    return pair_from_arrays(clean, corrupt, name=name or Path(clean_path).stem, **kwargs)
