"""Map arbitrary leaf / metric names to safe zarr node keys; the true name is kept in attrs."""

from __future__ import annotations

from urllib.parse import quote

from .errors import StoreError

__all__ = ["safe_key", "check_name"]


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it is a non-empty string, else raise naming ``what``."""
    if not isinstance(name, str) or not name:
        raise StoreError(f"{what} name {name!r} must be a non-empty string")
    return name


def safe_key(name: str) -> str:
    """A zarr node key for ``name``: percent-encode all but ``[A-Za-z0-9._-]`` and a leading '.'/'_'."""
    key = quote(name, safe="-_.")
    if key[0] in "._":
        key = f"%{ord(key[0]):02X}{key[1:]}"
    return key
