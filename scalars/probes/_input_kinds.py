"""Input kinds: what a probe's arrays are, and how a model reads and scores them.

One object per kind (token sequences, exemplar-label sequences, regression pairs), registered by
name and tied to the model head that reads it, owns the arrays it needs, the shapes, the checks
against a model, the loss and accuracy, the output direction that attribution reads and the
position labels of plots. Types and interventions ask the probe's kind instead of branching on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from trainer.model import (
    MODEL_HEADS,
    chunked_token_metrics,
    model_head,
    next_token_correct,
    next_token_losses,
    query_correct,
    query_loss,
    regression_losses,
    to_rank,
    unembed,
    unembed_chunks,
)

if TYPE_CHECKING:
    from trainer.model import ModelConfig

__all__ = ["InputKind", "INPUT_KINDS", "register_input_kind", "input_kind_of", "input_kind_for_head",
           "TOKENS", "CLASSIFIER", "REGRESSION", "check_token_range", "describe_kinds"]


class InputKind:
    """The behaviour shared by every probe of one kind; subclasses set the class attributes.

    `arrays` are the arrays that identify the kind (and that the model's forward takes),
    `corrupt` their corrupted twins in a paired probe (empty: the kind has no pairs). The
    `default_*` names are the probes a type declared with probe="default", "default_pair" or
    "default_train" reads on a model of this kind, unless the run's task names its own."""

    name: ClassVar[str]
    arrays: ClassVar[tuple[str, ...]]
    corrupt: ClassVar[tuple[str, ...]] = ()
    default_probe: ClassVar[str]
    default_pair: ClassVar[str | None] = None
    default_train: ClassVar[str | None] = None

    def __reduce__(self):
        """Pickled by name: a probe sent to a dask worker comes back with the registered kind itself
        (kinds are compared by identity)."""
        return (_registered_kind, (self.name,))

    @property
    def head(self) -> str:
        """The model head that reads this kind: the `trainer.model.MODEL_HEADS` entry naming it."""
        return next(h.name for h in MODEL_HEADS.values() if h.input_kind == self.name)

    def default(self, which: str) -> str | None:
        """The probe this kind's models read for `default`, `default_pair` or `default_train`
        (`default_train` falls back to `default`); None for another name or no such probe."""
        if which == "default_train":
            return self.default_train or self.default_probe
        return {"default": self.default_probe, "default_pair": self.default_pair}.get(which)

    def batch_size(self, arrays) -> int:
        return int(np.shape(arrays[self.arrays[-1]])[0])

    def seq_len(self, arrays) -> int:
        """Positions the model sees."""
        raise NotImplementedError

    def n_pos(self, arrays) -> int:
        """Length of the `pos` dim of per-position types."""
        return self.seq_len(arrays)

    def inputs(self, arrays):
        """What the model's forward takes, batched."""
        return {k: arrays[k] for k in self.arrays}

    def corrupt_inputs(self, arrays):
        """The corrupted twin of `inputs` in a paired probe."""
        return {k: arrays[c] for k, c in zip(self.arrays, self.corrupt)}

    def check(self, probe, config: "ModelConfig") -> None:
        """ValueError if the probe's arrays do not fit a model with `config` (ids, sizes)."""

    def metrics(self, logits, arrays) -> tuple[Array, Array]:
        """Mean loss and accuracy of batched logits (B, T, n_out) on the probe."""
        raise NotImplementedError

    def scored(self, resid: Float[Array, "B T d"]) -> Float[Array, "B _ d"]:
        """The residual rows `metrics` reads, so re-runs unembed only those."""
        return resid

    def resid_metrics(self, model, resid: Float[Array, "B T d"], arrays, chunks=None) -> tuple[Array, Array]:
        """`metrics` from final residual streams, unembedding only the rows it reads."""
        return self.metrics(unembed(model, self.scored(resid)), arrays)

    def vocab_chunks(self, model):
        """The chunked unembedding `resid_metrics` takes for a large output space, or None."""
        return None

    def logit_direction(self, W_U: Float[Array, "d n_out"], arrays) -> tuple[Float[Array, "B P d"], slice]:
        """Direct logit attribution's output direction per sequence and scored position, and the
        positions (a slice of the sequence) it is read at."""
        raise NotImplementedError

    def vocab(self, config: "ModelConfig") -> int | None:
        """The token vocabulary probe ids must lie in, or None for kinds without token ids."""
        return None

    def n_outputs(self, config: "ModelConfig") -> int:
        """How many answers (logits) a paired probe's answer ids index."""
        return config.n_outputs

    def position_labels(self, probe) -> tuple[list[str], str]:
        """(one label per position, a note saying where the labels come from)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"InputKind({self.name!r})"


def check_token_range(tokens: np.ndarray, vocab_size: int | None, what: str) -> None:
    """ValueError naming `what` if a token id lies outside 0..vocab_size-1."""
    if vocab_size is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
        raise ValueError(
            f"{what} has token ids outside the vocabulary 0..{vocab_size - 1} (e.g. {int(bad.flat[0])}); "
            "check that the tokens belong to this model"
        )


class TokenInputs(InputKind):
    """`tokens` (B, S) int32, scored by next-token prediction at positions 0..S-2."""

    name, arrays, corrupt = "tokens", ("tokens",), ("corrupt_tokens",)
    default_probe, default_pair = "repeated_tokens", "induction_pair"

    def seq_len(self, arrays) -> int:
        return int(np.shape(arrays["tokens"])[1])

    def inputs(self, arrays):
        return arrays["tokens"]

    def corrupt_inputs(self, arrays):
        return arrays["corrupt_tokens"]

    def check(self, probe, config) -> None:
        check_token_range(np.asarray(probe.arrays["tokens"]), config.vocab_size, f"probe '{probe.name}'")

    def metrics(self, logits, arrays):
        tokens = arrays["tokens"]
        return jax.vmap(next_token_losses)(logits, tokens).mean(), jax.vmap(next_token_correct)(logits, tokens).mean()

    def resid_metrics(self, model, resid, arrays, chunks=None):
        target = arrays["tokens"][:, 1:]
        if chunks is not None:
            return chunked_token_metrics(model, resid[:, :-1], target, chunks)
        logits = unembed(model, resid[:, :-1])  # positions 0..S-2 predict tokens 1..S-1
        correct = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
        loss = (jax.nn.logsumexp(logits, axis=-1) - correct).mean()
        return loss, (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32).mean()

    def vocab_chunks(self, model):
        return unembed_chunks(model)

    def logit_direction(self, W_U, arrays):
        correct = arrays["tokens"][:, 1:]
        return W_U.T[correct] - to_rank(W_U.mean(1), correct.ndim + 1), slice(0, -1)

    def vocab(self, config) -> int | None:
        return config.vocab_size

    def position_labels(self, probe):
        tokens = np.asarray(probe.arrays["tokens"])
        bos = probe.metadata.get("bos")
        first = tokens[0]
        labels = ["BOS" if bos is not None and int(t) == int(bos) else str(int(t)) for t in first]
        b = tokens.shape[0]
        if b == 1 or bool((tokens == first).all()):
            return labels, f"tokens of probe '{probe.name}'"
        return labels, f"tokens of sequence 0 of the {b} sequences of probe '{probe.name}'; values are the mean over all {b}"


class _PairSequences(InputKind):
    """Interleaved item / answer sequences `a_0, b_0, ..., a_{P-1}` (the last answer never fed in)."""

    last_label: ClassVar[str]  # label of the final (scored) position, "{n}" for the item number
    described: ClassVar[str]  # what the a / b tokens are, in plot notes

    def seq_len(self, arrays) -> int:
        return 2 * int(np.shape(arrays[self.arrays[-1]])[1]) - 1

    def position_labels(self, probe):
        n_items = (probe.seq_len + 1) // 2
        labels = [f"{'x' if i % 2 == 0 else 'y'}{i // 2}" for i in range(probe.seq_len - 1)]
        labels.append(self.last_label.format(n=n_items - 1))
        return labels, f"positions of probe '{probe.name}' ({self.described}; mean over {probe.batch_size} sequences)"


class ClassifierInputs(_PairSequences):
    """`examples` (B, P, d_in) and `labels` (B, P): exemplar-label sequences scored at the query."""

    name, arrays, corrupt = "classifier", ("examples", "labels"), ("corrupt_examples", "corrupt_labels")
    default_probe, default_pair = "icl", "label_swap_pair"
    last_label, described = "q", "exemplar x / label y"

    def check(self, probe, config) -> None:
        ex, lab = np.asarray(probe.arrays["examples"]), np.asarray(probe.arrays["labels"])
        if ex.shape[-1] != config.d_in:
            raise ValueError(f"probe '{probe.name}' has exemplars of size {ex.shape[-1]}, the model expects d_in={config.d_in}")
        if lab.size and (lab.min() < 0 or lab.max() >= config.n_labels):
            raise ValueError(
                f"probe '{probe.name}' has labels in [{lab.min()}, {lab.max()}], the model has n_labels={config.n_labels}"
            )

    def metrics(self, logits, arrays):
        target = arrays["labels"][:, -1]
        return jax.vmap(query_loss)(logits, target).mean(), jax.vmap(query_correct)(logits, target).mean()

    def scored(self, resid):
        return resid[:, -1:]  # only the query (last) position is scored

    def logit_direction(self, W_U, arrays):
        correct = arrays["labels"][:, -1:]
        return W_U.T[correct] - to_rank(W_U.mean(1), correct.ndim + 1), slice(-1, None)


class RegressionInputs(_PairSequences):
    """`xs` (B, K, D) and `ys` (B, K): in-context regression, scored by the squared error of the K
    predictions (read at the x tokens; accuracy is undefined, NaN)."""

    name, arrays = "regression", ("xs", "ys")
    default_probe, default_train = "regression", "regression_pool"
    last_label, described = "x{n}", "input x / target y"

    def n_pos(self, arrays) -> int:
        return int(np.shape(arrays["ys"])[1])  # the K predictions are the positions

    def check(self, probe, config) -> None:
        if np.shape(probe.arrays["xs"])[-1] + 1 != config.d_in:
            raise ValueError(f"probe '{probe.name}' has x of size {np.shape(probe.arrays['xs'])[-1]}, the model "
                             f"expects d_in - 1 = {config.d_in - 1}")

    def metrics(self, logits, arrays):
        return jax.vmap(regression_losses)(logits, arrays["ys"]).mean(), jnp.asarray(jnp.nan, jnp.float32)

    def logit_direction(self, W_U, arrays):
        ys = arrays["ys"]  # one output: the direct effect on the prediction, at the x tokens
        return jnp.broadcast_to(W_U[:, 0], (*ys.shape, W_U.shape[0])), slice(0, None, 2)


INPUT_KINDS: dict[str, InputKind] = {}


def _registered_kind(name: str) -> InputKind:
    return INPUT_KINDS[name]


def register_input_kind(kind: InputKind) -> InputKind:
    """Add (or replace) an input kind under its name."""
    INPUT_KINDS[kind.name] = kind
    return kind


TOKENS = register_input_kind(TokenInputs())
CLASSIFIER = register_input_kind(ClassifierInputs())
REGRESSION = register_input_kind(RegressionInputs())


def input_kind_of(arrays) -> InputKind | None:
    """The kind whose identifying arrays `arrays` holds (the first registered), or None."""
    return next((k for k in INPUT_KINDS.values() if set(k.arrays) <= set(arrays)), None)


def input_kind_for_head(head: str) -> InputKind:
    """The kind a model with head `head` reads."""
    return INPUT_KINDS[model_head(head).input_kind]


def describe_kinds() -> str:
    """'tokens (tokens); examples, labels (classifier); ...': what each kind's probe arrays are."""
    return "; ".join(f"{', '.join(k.arrays)} ({k.name})" for k in INPUT_KINDS.values())

