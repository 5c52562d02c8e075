"""Sequence formats of the ICL task: how a training sequence is laid out, how its in-context
evaluations relabel, which extra evaluation sets and probes come with it. A format is chosen by
name (`task.sequence_format`); a new one is one `register_sequence_format` call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SequenceFormat", "SEQUENCE_FORMATS", "register_sequence_format", "get_sequence_format"]


def _no_check(cfg: Any) -> None:
    return None


def _nothing(cfg: Any, blocks: Mapping[str, tuple[int, int]]) -> dict[str, dict]:
    return {}


@dataclasses.dataclass(frozen=True)
class SequenceFormat:
    """One layout of ICL training sequences and what comes with it.

    `training(cfg)` gives the sampler fields (`SeqSpec`) the format fixes for training; `context_slots(cfg)`
    the context positions the bursty classes take; `check(cfg)` raises `ValueError` for a config the
    format cannot sample; `eval_relabel` is how the in-context evaluation sets relabel; `extra_evals(cfg,
    blocks)` names further evaluation sets by their sampler fields; `eval_aliases` gives other names of
    standard sets; `probe_defaults` the probes a run of this format is measured on by default."""

    name: str
    description: str
    training: Callable[[Any], dict[str, Any]]
    context_slots: Callable[[Any], int]
    eval_relabel: str
    check: Callable[[Any], None] = _no_check
    extra_evals: Callable[[Any, Mapping[str, tuple[int, int]]], dict[str, dict]] = _nothing
    eval_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    probe_defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    probes: tuple[str, ...] = ()


SEQUENCE_FORMATS: dict[str, SequenceFormat] = {}


def register_sequence_format(fmt: SequenceFormat) -> SequenceFormat:
    """Make `fmt` choosable as `task.sequence_format = fmt.name`."""
    SEQUENCE_FORMATS[fmt.name] = fmt
    return fmt


def get_sequence_format(name: str) -> SequenceFormat:
    """The registered format `name`; one sentence naming the choices for an unknown one."""
    if name not in SEQUENCE_FORMATS:
        raise ValueError(f"unknown sequence_format {name!r}; choose one of {', '.join(SEQUENCE_FORMATS)}.")
    return SEQUENCE_FORMATS[name]


register_sequence_format(SequenceFormat(
    name="bursty",
    description="bursty exemplar-label sequences: with probability p_bursty the query class (and a distractor if "
                "bursty_distractor) appears `burstiness` times in the context, labels the fixed class map (per "
                "sequence permuted with fewshot_relabel)",
    training=lambda cfg: dict(p_bursty=cfg.p_bursty, distractor=cfg.bursty_distractor,
                              relabel="perm" if cfg.fewshot_relabel else "none"),
    context_slots=lambda cfg: cfg.burstiness * (2 if cfg.bursty_distractor else 1),
    eval_relabel="perm",
))


def _icl_dynamics_check(cfg: Any) -> None:
    if not cfg.label_pairs:
        raise ValueError("sequence_format 'icl_dynamics' needs label_pairs; pass e.g. ICL_DYNAMICS_TRAIN_PAIRS.")
    if cfg.context_len != 2 * cfg.burstiness:
        raise ValueError(
            f"sequence_format 'icl_dynamics' needs context_len == 2 * burstiness (query and distractor class only), "
            f"got context_len={cfg.context_len}, burstiness={cfg.burstiness}."
        )


def _icl_dynamics_evals(cfg: Any, blocks: Mapping[str, tuple[int, int]]) -> dict[str, dict]:
    out = {}
    if cfg.val_label_pairs:
        out["fsl_val_rl"] = dict(label_pairs=cfg.val_label_pairs)
    ex_lo, ex_n = blocks["ex_val"]
    if ex_n > 0:
        out["fsl_train_valex"] = dict(ex_lo=ex_lo, ex_n=ex_n)
    return out


register_sequence_format(SequenceFormat(
    name="icl_dynamics",
    description="the icl-dynamics training sampler (fixtures README section 7): every sequence holds the query "
                "class Q and a distractor D `burstiness` times each, a pair (a, b) drawn from label_pairs in random "
                "order labels Q's items a and D's b; p_bursty, bursty_distractor and fewshot_relabel are not used",
    training=lambda cfg: dict(p_bursty=1.0, distractor=True, relabel="pairs"),
    context_slots=lambda cfg: 2 * cfg.burstiness,
    eval_relabel="pairs",
    check=_icl_dynamics_check,
    extra_evals=_icl_dynamics_evals,
    eval_aliases={"fsl_train": "icl_train", "fsl_test_class": "icl"},
    # the format is measured on its paper's own probe set
    probe_defaults={"default": "icl_dynamics", "default_train": "icl_dynamics"},
    probes=("icl_dynamics",),
))
