"""Paired probes built from a run: the names `induction_pair`, `label_swap_pair` and user pair files.

`build_run_pair(name, run_dir, info, config)` returns the pair called `name`, or None when the
name is not a pair (the ordinary probe builders then handle it). Names: `induction_pair` (options
`induction_pair:batch=16,T=32,seed=0`, as repeated_tokens), `label_swap_pair` (the run's default
classifier probe, icl_dynamics or icl, with labels swapped), `CLEAN.npy,CORRUPT.npy` (a token
pair, metric loss on every next token), or a `.npz` holding `tokens` and `corrupt_tokens` (and
optionally `answer_pos`, `answers`, `wrong_answers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.model import ModelConfig, model_head

from ..probes._input_kinds import CLASSIFIER, TOKENS, input_kind_for_head
from ..probes._probe import Probe, read_npz
from ..probes._registry import split_probe_options
from ..probes._pairs import PairProbe, classifier_label_swap_pair, pair_from_arrays, pair_from_npy, pair_from_repeated

__all__ = ["PAIR_NAMES", "build_run_pair"]

PAIR_NAMES = ("induction_pair", "label_swap_pair")


def _vocab(config: ModelConfig) -> int | None:
    return input_kind_for_head(config.head).vocab(config)


def _require(kind, config: ModelConfig, what: str, instead: str) -> None:
    """ValueError unless the run's model reads `kind` inputs: `what` needs a `kind.head` model."""
    if input_kind_for_head(config.head) is not kind:
        raise ValueError(f"{what} needs a {model_head(kind.head).words}; this run is a "
                         f"{model_head(config.head).words}{instead}")


def _npz_pair(path: Path, config: ModelConfig) -> PairProbe | None:
    arrays = read_npz(path)
    if "corrupt_tokens" not in arrays:
        return None
    if "tokens" not in arrays:
        raise ValueError(f"pair file {str(path)!r} has corrupt_tokens but no clean 'tokens' array")
    return pair_from_arrays(arrays["tokens"], arrays["corrupt_tokens"], answer_pos=arrays.get("answer_pos"),
                            answers=arrays.get("answers"), wrong_answers=arrays.get("wrong_answers"),
                            vocab_size=_vocab(config), name=path.stem, metadata={"source": path.name})


def build_run_pair(name: str, config: ModelConfig, build_probe: Callable[[str], Probe]) -> PairProbe | None:
    """The paired probe called `name` for this run, or None if `name` names no pair; `build_probe`
    builds the run's plain probes (the pair's clean side)."""

    if "," in name and name.endswith(".npy") and name.split(",")[0].endswith(".npy"):
        clean, _, corrupt = name.partition(",")
        _require(TOKENS, config, "a .npy token pair", "")
        pair = pair_from_npy(clean, corrupt, vocab_size=_vocab(config))
        pair.check(config)
        return pair
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            return None  # the ordinary builder reports the missing file
        pair = _npz_pair(path, config)
        if pair is not None:
            pair.check(config)
        return pair
    base, opts = split_probe_options(name)
    if base == "induction_pair":
        _require(TOKENS, config, "probe 'induction_pair'", ", use label_swap_pair")
        plain = build_probe("repeated_tokens" + name[len(base):])
        pair = pair_from_repeated(plain, name="induction_pair")
    elif base == "label_swap_pair":
        _require(CLASSIFIER, config, "probe 'label_swap_pair'", ", use induction_pair")
        if opts:
            raise ValueError(f"probe 'label_swap_pair' takes no options, got {name!r}; it swaps labels in the run's "
                             "default classifier probe")
        plain = build_probe("default")
        pair = classifier_label_swap_pair(plain, n_labels=config.n_labels)
    else:
        return None
    pair.check(config)
    return pair
