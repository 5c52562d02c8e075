"""Store-specific error type: a user-facing ValueError with one clear sentence."""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(ValueError):
    """A stored thing is missing, foreign, locked, corrupted or inconsistent with a request."""
