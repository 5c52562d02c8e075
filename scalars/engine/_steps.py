"""`--steps` specs: which committed checkpoints to compute.

Grammar: comma-separated items, each `N` (a step), `A-B` or `A:B` (steps in [A, B]), `every:K`
(every K-th committed checkpoint, starting with the first), `first`, `last`. Empty or `all`: every
committed step. A named step that is not in the archive is an error naming the nearest ones.
"""

from __future__ import annotations

import numpy as np

import store

SPEC_HELP = "use e.g. '0-1000', '0,500,1000', 'every:4', 'last' or 'all'"


def _nearest(steps: np.ndarray, step: int) -> str:
    return ", ".join(str(s) for s in store.nearest_steps(steps, step))


def _int(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad --steps spec {spec!r}: {text!r} is not a step number; {SPEC_HELP}") from None
    if value < 0:
        raise ValueError(f"bad --steps spec {spec!r}: steps are non-negative, got {value}; {SPEC_HELP}")
    if value >= 2**63:
        raise ValueError(f"bad --steps spec {spec!r}: {value} is larger than any step a run can hold; {SPEC_HELP}")
    return value


def select_steps(spec: str | None, committed) -> np.ndarray:
    """The committed steps that `spec` names, sorted and unique."""
    committed = np.asarray(committed, dtype=np.int64)
    if spec is None or spec.strip() in ("", "all"):
        return committed
    chosen: set[int] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ValueError(f"bad --steps spec {spec!r}: empty item; {SPEC_HELP}")
        if item == "last":
            chosen.update(committed[-1:].tolist())
        elif item == "first":
            chosen.update(committed[:1].tolist())
        elif item.startswith("every:"):
            k = _int(item[6:], spec)
            if k < 1:
                raise ValueError(f"bad --steps spec {spec!r}: every:K needs K >= 1; {SPEC_HELP}")
            chosen.update(committed[::k].tolist())
        elif "-" in item[1:] or ":" in item:
            sep = ":" if ":" in item else "-"
            lo_text, hi_text = item.split(sep, 1)
            lo, hi = _int(lo_text, spec), _int(hi_text, spec)
            if lo > hi:
                raise ValueError(f"bad --steps spec {spec!r}: range {item!r} ends before it starts; {SPEC_HELP}")
            chosen.update(committed[(committed >= lo) & (committed <= hi)].tolist())
        else:
            step = _int(item, spec)
            if step not in set(committed.tolist()):
                near = _nearest(committed, step) if committed.size else "none"
                raise ValueError(f"step {step} is not a committed checkpoint of this run; nearest: {near}")
            chosen.add(step)
    if not chosen:
        raise ValueError(f"--steps {spec!r} selects no committed checkpoint (the run has {committed.size}); {SPEC_HELP}")
    return np.array(sorted(chosen), dtype=np.int64)
