"""Derived scalars of checkpoint archives: a registry of types, probes, and one compute over runs.

A type is one decorated function (`@register(name, dims=..., probe=..., description=...)`);
`compute(runs, types)` plans the request and computes every missing (type, step) cell, in this
process or on dask (`executor=scalars.engine.Dask(...)`). Inside one checkpoint: `load_model(run,
step)`, `run_with_cache`, and the edits of `scalars.one_checkpoint`. The subpackages hold the rest:
`registry`, `probes`, `interventions`, `types` (the built-ins), `engine`, `reference`, `view`.
"""

from . import dims as dims
from .engine import ComputeReport as ComputeReport
from .engine import compute as compute
from .engine import estimate as estimate
from .engine import make_compute_fn as make_compute_fn
from .engine import plan as plan
from .one_checkpoint import load_model as load_model
from .one_checkpoint import run_with_cache as run_with_cache
from .probes import Probe as Probe
from .probes import register_probe as register_probe
from .registry import DerivedScalarType as DerivedScalarType
from .registry import get_type as get_type
from .registry import list_types as list_types
from .registry import load_plugin as load_plugin
from .registry import register as register
from . import types as types  # noqa: E402  (registers the built-in types)

__all__ = [
    "dims", "register", "get_type", "list_types", "load_plugin", "DerivedScalarType", "Probe", "register_probe",
    "plan", "compute", "estimate", "ComputeReport", "make_compute_fn", "load_model", "run_with_cache",
]
