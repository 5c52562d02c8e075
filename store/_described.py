"""What every checkpoint reader says about its checkpoints: leaf names and specs, steps, count."""

from __future__ import annotations

import numpy as np


class DescribedCheckpoints:
    """Read-only description shared by the archive readers (set ``_specs`` and ``_steps``)."""

    _specs: dict[str, tuple[tuple[int, ...], str]]
    _steps: np.ndarray

    @property
    def leaf_names(self) -> list[str]:
        """Leaf names, sorted."""
        return list(self._specs)

    @property
    def leaf_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{name: (shape, dtype name)}`` of every leaf."""
        return dict(self._specs)

    @property
    def steps(self) -> np.ndarray:
        """Committed steps, strictly increasing (int64)."""
        return self._steps.copy()

    @property
    def n_committed(self) -> int:
        """Number of committed checkpoints."""
        return int(self._steps.size)
