"""Marks shared by the tests: which parameters of a long parametrized test run by default."""

from __future__ import annotations

from collections.abc import Iterable

import pytest


def slow_except(values: Iterable, keep: Iterable) -> list:
    """`values` for `pytest.mark.parametrize`, every one not in `keep` marked slow: the default run
    covers the kept cases, and `pytest -m slow` (which `.ci/run` also runs) covers the rest."""
    keep = set(keep)
    missing = keep - set(values)
    if missing:
        raise ValueError(f"slow_except keeps cases that do not exist: {sorted(missing)}")
    return [v if v in keep else pytest.param(v, marks=pytest.mark.slow) for v in values]
