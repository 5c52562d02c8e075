"""Axis labels of an attention pattern: the probe's tokens, or each position's role.

The stored pattern is a mean over the probe's B sequences. Token probes label each position
with its token where every sequence has the same token there (BOS), else with the token of
sequence 0, and say so in a note; classifier and regression probes label positions by role
(`x0 y0 x1 ... q`), as the model sees them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .._probes import Probe

__all__ = ["axis_labels", "position_labels"]


def position_labels(n: int) -> list[str]:
    """Plain position numbers, for patterns whose probe is not at hand."""
    return [str(i) for i in range(n)]


def axis_labels(probe: "Probe") -> tuple[list[str], str]:
    """(one label per position, a note saying where the labels come from)."""
    if probe.kind == "tokens":
        tokens = np.asarray(probe.arrays["tokens"])
        bos = probe.metadata.get("bos")
        first = tokens[0]
        labels = ["BOS" if bos is not None and int(t) == int(bos) else str(int(t)) for t in first]
        b = tokens.shape[0]
        if b == 1 or bool((tokens == first).all()):
            return labels, f"tokens of probe '{probe.name}'"
        note = f"tokens of sequence 0 of the {b} sequences of probe '{probe.name}'; values are the mean over all {b}"
        return labels, note
    n_items = (probe.seq_len + 1) // 2
    last = "q" if probe.kind == "classifier" else f"x{n_items - 1}"
    labels = [f"{'x' if i % 2 == 0 else 'y'}{i // 2}" for i in range(probe.seq_len - 1)] + [last]
    what = "exemplar x / label y" if probe.kind == "classifier" else "input x / target y"
    return labels, f"positions of probe '{probe.name}' ({what}; mean over {probe.batch_size} sequences)"
