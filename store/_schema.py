"""Schema of the scalar store: variable specs, names, coords and attrs, validated before any write.

A variable ``NAME`` has dims ``(step, *spec.dims)``, one chunk per step, NaN fill; its mask
``computed__NAME`` has dims ``(step,)`` (uint8, 1 = the cell is real). Numeric dim coords are
zarr arrays named after the dim; string coords live in the root attrs (no ``<U`` arrays).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dims import RUN, STEP
from .errors import StoreError

__all__ = ["VariableSpec", "MASK_PREFIX", "mask_name", "as_steps", "coord_values", "fmt_dims",
           "STRING_COORDS_ATTR", "nearest_steps"]

MASK_PREFIX = "computed__"
STRING_COORDS_ATTR = "string_coords"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


def nearest_steps(steps: Any, step: int) -> list[int]:
    """The stored steps next to ``step`` on a sorted step axis: the last one before it and the first
    one after it (one of them at the ends), for "step N is not stored; nearest: ..." messages."""
    steps = np.asarray(steps, dtype=np.int64)
    i = int(np.searchsorted(steps, min(max(int(step), -(2**62)), 2**62)))
    return [int(s) for s in steps[max(0, i - 1):i + 1]]


def mask_name(name: str) -> str:
    """Name of the computed-mask variable of scalar ``name``."""
    return MASK_PREFIX + name


@dataclass(frozen=True)
class VariableSpec:
    """One stored scalar type: its dims after ``step``, a coord array per dim, JSON-able attrs.

    ``attrs`` should hold "probe_hash", "description", "units" and "version"; ``dtype`` is the
    stored float type (float32 unless the type needs float64).
    """

    name: str
    dims: tuple[str, ...]
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        name, dims = self.name, tuple(self.dims)
        object.__setattr__(self, "dims", dims)
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith(MASK_PREFIX):
            raise StoreError(f"scalar name {name!r} must start with a letter, use only letters, digits, "
                             f"'_', '.', '-', and not start with {MASK_PREFIX!r}; choose another name")
        if name in (STEP, RUN) or name in dims:
            raise StoreError(f"scalar name {name!r} collides with a dim name; choose another name")
        if len(set(dims)) != len(dims) or STEP in dims or RUN in dims:
            raise StoreError(f"scalar '{name}' has dims {dims}; dims must be distinct and exclude "
                             f"'{STEP}' (always first) and '{RUN}'")
        for d in dims:
            if not isinstance(d, str) or not _NAME.match(d):
                raise StoreError(f"scalar '{name}' has a bad dim name {d!r}; use letters, digits and '_'")
        if set(self.coords) != set(dims):
            raise StoreError(f"scalar '{name}' needs one coord array per dim {dims}, got coords for "
                             f"{tuple(self.coords)}; pass coords for exactly its dims")
        coords = {d: coord_values(self.coords[d], f"coord '{d}' of scalar '{name}'") for d in dims}
        object.__setattr__(self, "coords", coords)
        try:
            attrs = json.loads(json.dumps(dict(self.attrs)))
        except (TypeError, ValueError) as e:
            raise StoreError(f"attrs of scalar '{name}' are not JSON-serializable ({e}); pass plain "
                             "numbers, strings, lists and dicts") from None
        object.__setattr__(self, "attrs", attrs)
        if np.dtype(self.dtype) not in (np.dtype("float32"), np.dtype("float64")):
            raise StoreError(f"scalar '{name}' has dtype {self.dtype}; scalars are stored as float32 or "
                             "float64 (NaN marks missing values)")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Length of each dim after ``step``."""
        return tuple(len(self.coords[d]) for d in self.dims)


def coord_values(values: Any, what: str) -> np.ndarray:
    """A 1-D coord array: int64, float64, bool, or (for text) an object array of str."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise StoreError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    if arr.dtype.kind == "b":
        return arr.astype(bool)
    if arr.dtype.kind in "USO":
        out = np.array([v.decode() if isinstance(v, bytes) else v for v in arr.tolist()], dtype=object)
        if not all(isinstance(v, str) for v in out):
            raise StoreError(f"{what} mixes strings with other values; pass numbers or strings only")
        return out
    raise StoreError(f"{what} has dtype {arr.dtype}; pass integers, floats, bools or strings")


def as_steps(steps: Any, what: str = "steps") -> np.ndarray:
    """Validate step numbers: 1-D, integer-valued, non-negative; returned as int64 in given order."""
    arr = np.asarray(steps)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu" and not
                         (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0))):
        raise StoreError(f"{what} must be a 1-D list of integers, got {np.asarray(steps)!r}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise StoreError(f"{what} must be non-negative, got {int(arr.min())}")
    return arr


def fmt_dims(dims: Sequence[str], sizes: Sequence[int] | None = None) -> str:
    """``(step, layer, head)`` or, with sizes, ``(step, layer: 2, head: 8)``."""
    if sizes is None:
        return "(" + ", ".join((STEP, *dims)) + ")"
    return "(" + ", ".join([STEP, *(f"{d}: {s}" for d, s in zip(dims, sizes))]) + ")"
