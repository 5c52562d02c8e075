"""Induction LM task: a random token segment that is repeated later in the sequence.

Sequences are `BOS, filler, S, filler, S, filler` (total `seq_len` tokens); the second copy of
S can only be predicted by looking back at the first, so low loss needs induction heads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

_FILLERS = ("uniform", "markov")
_LOSS_ON = ("all", "copy")


@dataclasses.dataclass(frozen=True)
class InductionTaskConfig:
    """Repeated-segment token task; hashable so it can be a static argument of `jax.jit`.

    Layout: BOS at 0, then `seq_len - 1` body tokens holding `1 + n_repeats` copies of one
    random segment (length uniform in `[segment_len_min, segment_len_max]`) at random,
    non-overlapping, increasing positions; the rest is filler. Tokens other than BOS are drawn
    from every id except `bos_token`. Filler is `"uniform"` or `"markov"`: a fixed bigram chain
    whose rows are Dirichlet(`markov_concentration`) draws from `numpy.random.default_rng(
    filler_seed)` (a small concentration gives peaked, learnable rows). `loss_on="all"` weights
    every next-token position; `"copy"` only targets inside a repeated copy at offset >= 1
    (the tokens induction can predict).
    """

    vocab_size: int = 64
    seq_len: int = 64
    bos_token: int = 0
    segment_len_min: int = 8
    segment_len_max: int = 24
    n_repeats: int = 1
    filler: Literal["uniform", "markov"] = "uniform"
    filler_seed: int = 0
    markov_concentration: float = 0.1
    loss_on: Literal["all", "copy"] = "all"

    def sample(self, key, batch_size: int, data=None, *, with_info: bool = False) -> dict:
        """One training batch (`trainer.tasks.sample_batch`); pure and jittable with the config static."""
        return sample_induction_batch(self, key, batch_size, with_info=with_info)

    def __post_init__(self):
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3, got {self.vocab_size}; raise it.")
        if not 0 <= self.bos_token < self.vocab_size:
            raise ValueError(
                f"bos_token {self.bos_token} is outside the vocabulary 0..{self.vocab_size - 1}; "
                "pick an id inside it."
            )
        if not 1 <= self.segment_len_min <= self.segment_len_max:
            raise ValueError(
                f"segment lengths must satisfy 1 <= segment_len_min <= segment_len_max, got "
                f"{self.segment_len_min}..{self.segment_len_max}; fix the range."
            )
        if self.n_repeats < 1:
            raise ValueError(f"n_repeats must be at least 1, got {self.n_repeats}; set it to 1 or more.")
        need = (1 + self.n_repeats) * self.segment_len_max
        if need > self.seq_len - 1:
            raise ValueError(
                f"seq_len {self.seq_len} leaves {self.seq_len - 1} tokens after BOS but "
                f"{1 + self.n_repeats} copies of a segment of up to {self.segment_len_max} tokens "
                f"need {need}; raise seq_len or lower segment_len_max."
            )
        if self.filler not in _FILLERS:
            raise ValueError(f"filler must be one of {_FILLERS}, got {self.filler!r}; pick one of them.")
        if self.loss_on not in _LOSS_ON:
            raise ValueError(f"loss_on must be one of {_LOSS_ON}, got {self.loss_on!r}; pick one of them.")
        if not self.markov_concentration > 0:
            raise ValueError(
                f"markov_concentration must be positive, got {self.markov_concentration}; use e.g. 0.1."
            )


@functools.lru_cache(maxsize=32)
def _markov_probs(vocab_size: int, bos: int, seed: int, concentration: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(vocab_size - 1, concentration), size=vocab_size)
    rows = np.maximum(rows, 1e-9)
    rows /= rows.sum(axis=1, keepdims=True)
    out = np.insert(rows, bos, 0.0, axis=1)  # BOS is never emitted
    out.setflags(write=False)
    return out


def markov_transition_matrix(cfg: InductionTaskConfig) -> Float[np.ndarray, "vocab vocab"]:
    """The fixed bigram matrix P[prev, next] (float64, rows sum to 1) used for `filler="markov"`."""
    return _markov_probs(cfg.vocab_size, cfg.bos_token, cfg.filler_seed, cfg.markov_concentration).copy()


def _tokens_from_uniform(u: Array, vocab_size: int, bos: int) -> Int[Array, "..."]:
    r = jnp.minimum(jnp.floor(u * (vocab_size - 1)).astype(jnp.int32), vocab_size - 2)
    return r + (r >= bos).astype(jnp.int32)


def _draw_tokens(key: PRNGKeyArray, shape: tuple[int, ...], vocab_size: int, bos: int) -> Int[Array, "..."]:
    return _tokens_from_uniform(jax.random.uniform(key, shape), vocab_size, bos)


def _sample_one(cfg: InductionTaskConfig, key: PRNGKeyArray) -> dict[str, Array]:
    # One uniform draw per sequence, carved into pieces (much cheaper to compile than many
    # jax.random calls); discrete draws are floor(u * n) or inverse-CDF lookups.
    n_body = cfg.seq_len - 1
    n_copies = 1 + cfg.n_repeats
    n_len = cfg.segment_len_max - cfg.segment_len_min + 1
    u = jax.random.uniform(key, (1 + n_copies + cfg.segment_len_max + n_body,))
    u_len, u_cut = u[0], u[1 : 1 + n_copies]
    u_seg, u_fill = u[1 + n_copies : 1 + n_copies + cfg.segment_len_max], u[1 + n_copies + cfg.segment_len_max :]
    seg_len = cfg.segment_len_min + jnp.minimum(jnp.floor(u_len * n_len).astype(jnp.int32), n_len - 1)
    n_filler = n_body - n_copies * seg_len
    # Sorted uniform cut points split the filler into n_copies + 1 gaps.
    cuts = jnp.sort(jnp.minimum(jnp.floor(u_cut * (n_filler + 1)).astype(jnp.int32), n_filler))
    starts = cuts + jnp.arange(n_copies, dtype=jnp.int32) * seg_len  # body coordinates
    pos = jnp.arange(n_body, dtype=jnp.int32)
    rel = pos[None, :] - starts[:, None]
    inside = (rel >= 0) & (rel < seg_len)
    in_copy = inside.any(axis=0)
    copy_idx = jnp.argmax(inside, axis=0)
    offset = jnp.where(in_copy, jnp.sum(jnp.where(inside, rel, 0), axis=0), 0)
    seg_tok = _tokens_from_uniform(u_seg, cfg.vocab_size, cfg.bos_token)[offset]
    if cfg.filler == "uniform":
        fill = _tokens_from_uniform(u_fill, cfg.vocab_size, cfg.bos_token)
        body = jnp.where(in_copy, seg_tok, fill)
    else:
        cdf = jnp.asarray(np.cumsum(markov_transition_matrix(cfg), axis=1).astype(np.float32))
        last = cfg.vocab_size - 1 if cfg.bos_token != cfg.vocab_size - 1 else cfg.vocab_size - 2

        def step(prev, xs):
            uu, use_seg, tok = xs
            row = cdf[prev]
            drawn = jnp.searchsorted(row, uu * row[-1], side="right", method="compare_all").astype(jnp.int32)
            nxt = jnp.where(use_seg, tok, jnp.minimum(drawn, last))
            return nxt, nxt

        _, body = jax.lax.scan(step, jnp.int32(cfg.bos_token), (u_fill, in_copy, seg_tok))
    tokens = jnp.concatenate([jnp.full((1,), cfg.bos_token, jnp.int32), body])
    if cfg.loss_on == "all":
        mask = jnp.ones((n_body,), jnp.float32)
    else:
        mask = (in_copy & (copy_idx >= 1) & (offset >= 1)).astype(jnp.float32)
    return {"tokens": tokens, "loss_mask": mask, "segment_starts": starts + 1, "segment_len": seg_len}


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size", "with_info"))
def sample_induction_batch(
    cfg: InductionTaskConfig, key: PRNGKeyArray, batch_size: int, *, with_info: bool = False
) -> dict[str, Array]:
    """Draw a batch (jitted; cfg static): `tokens` int32 (B, seq_len), `loss_mask` float32 (B, seq_len - 1).

    Mask entry i weights the prediction of token i + 1. With `with_info`, also
    `segment_starts` int32 (B, 1 + n_repeats) (token positions of each copy) and `segment_len` (B,).
    """
    out = jax.vmap(functools.partial(_sample_one, cfg))(jax.random.split(key, batch_size))
    if not with_info:
        out = {"tokens": out["tokens"], "loss_mask": out["loss_mask"]}
    return out


def repeated_tokens_probe(
    key: PRNGKeyArray, batch: int, T: int, vocab_size: int, bos_token: int = 0
) -> Int[Array, "batch 1+2*T"]:
    """The engine's standard probe: BOS, then T uniform random non-BOS tokens, then the same T again."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 to draw non-BOS tokens, got {vocab_size}.")
    if T < 1 or batch < 1:
        raise ValueError(f"batch and T must be positive, got batch={batch}, T={T}.")
    rand = _draw_tokens(key, (batch, T), vocab_size, bos_token)
    bos = jnp.full((batch, 1), bos_token, jnp.int32)
    return jnp.concatenate([bos, rand, rand], axis=1)
