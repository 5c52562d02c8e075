"""Axis labels of an attention pattern: the probe's tokens, or each position's role.

The stored pattern is a mean over the probe's B sequences. Token probes label each position
with its token where every sequence has the same token there (BOS), else with the token of
sequence 0, and say so in a note; classifier and regression probes label positions by role
(`x0 y0 x1 ... q`), as the model sees them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..probes._probe import Probe

__all__ = ["axis_labels", "position_labels"]


def position_labels(n: int) -> list[str]:
    """Plain position numbers, for patterns whose probe is not at hand."""
    return [str(i) for i in range(n)]


def axis_labels(probe: "Probe") -> tuple[list[str], str]:
    """(one label per position, a note saying where the labels come from)."""
    return probe.input_kind.position_labels(probe)
