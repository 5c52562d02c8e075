"""Slow references the fast engine is tested against: one full forward per intervention, python
loops, no shared prefixes (`naive_compute` for the head types, `naive_patching` for patching)."""

from ._naive import naive_compute as naive_compute
from ._patching import NAIVE_TYPES as NAIVE_TYPES
from ._patching import naive_patching as naive_patching

__all__ = ["naive_compute", "naive_patching", "NAIVE_TYPES"]
