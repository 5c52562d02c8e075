"""Derived-scalar types: the registry, probes, built-in types and the per-checkpoint compute function.

A type is one decorated function (`@register(name, dims=..., probe=..., description=...)`);
`make_compute_fn(types, config, probes)` turns a list of types into one jitted program per
checkpoint. Dims come from the project vocabulary (`scalars.dims`, = `store.dims`). Inside one
checkpoint: `load_model(run, step)`, `run_with_cache`, `ablate_head`, `patch_head`, ... (`scalars.one_checkpoint`).
"""

from . import dims as dims
from ._compute import ComputeFn as ComputeFn
from ._compute import make_block_compute_fn as make_block_compute_fn
from ._compute import make_compute_fn as make_compute_fn
from ._compute import select_probe as select_probe
from ._compute import stack_params as stack_params
from ._context import Context as Context
from ._plan import ComputePlan as ComputePlan
from ._engine import ComputeReport as ComputeReport
from ._engine import StallError as StallError
from ._engine import compute_run as compute_run
from ._engine import compute_runs as compute_runs
from ._batch import compute_batch as compute_batch
from ._batch import estimate_batch as estimate_batch
from ._probe_registry import ProbeRun as ProbeRun
from ._probe_registry import list_probes as list_probes
from ._probe_registry import register_probe as register_probe
from ._probe_registry import unregister_probe as unregister_probe
from ._cost import CostEstimate as CostEstimate
from ._plan import plan_compute as plan_compute
from ._run_probes import build_run_probe as build_run_probe
from ._steps import select_steps as select_steps
from ._naive import naive_compute as naive_compute
from .one_checkpoint import ActivationCache as ActivationCache
from .one_checkpoint import CheckpointModel as CheckpointModel
from .one_checkpoint import ablate_head as ablate_head
from .one_checkpoint import ablate_neuron as ablate_neuron
from .one_checkpoint import load_model as load_model
from .one_checkpoint import patch_head as patch_head
from .one_checkpoint import patch_resid as patch_resid
from .one_checkpoint import run_with_cache as run_with_cache
from ._pairs import PairProbe as PairProbe
from ._pairs import classifier_label_swap_pair as classifier_label_swap_pair
from ._pairs import induction_pair as induction_pair
from ._pairs import pair_from_arrays as pair_from_arrays
from ._pairs import pair_from_npy as pair_from_npy
from ._patch_naive import naive_patching as naive_patching
from ._probes import Probe as Probe
from ._probes import detect_repeat_length as detect_repeat_length
from ._probes import from_classifier_arrays as from_classifier_arrays
from ._probes import from_npy as from_npy
from ._probes import from_regression_arrays as from_regression_arrays
from ._probes import from_tokens as from_tokens
from ._probes import repeated_tokens as repeated_tokens
from ._registry import TYPE_SETS as TYPE_SETS
from ._registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._registry import DerivedScalarType as DerivedScalarType
from ._registry import get_type as get_type
from ._registry import list_types as list_types
from ._registry import load_entry_point_plugins as load_entry_point_plugins
from ._registry import load_plugin as load_plugin
from ._registry import probe_name as probe_name
from ._registry import register as register
from ._registry import resolve_options as resolve_options
from ._registry import type_attrs as type_attrs
from ._registry import type_coords as type_coords
from ._registry import type_shape as type_shape
from ._registry import unregister as unregister

__all__ = [
    "dims", "register", "unregister", "get_type", "list_types", "load_plugin", "load_entry_point_plugins",
    "DerivedScalarType", "type_shape", "type_coords", "type_attrs", "resolve_options", "probe_name", "TYPE_SETS",
    "ENTRY_POINT_GROUP", "Probe", "repeated_tokens", "from_tokens", "from_npy", "from_classifier_arrays",
    "from_regression_arrays",
    "detect_repeat_length",
    "Context", "ComputeFn", "make_compute_fn", "make_block_compute_fn", "select_probe", "stack_params",
    "naive_compute", "ComputePlan", "ComputeReport", "compute_run", "compute_runs", "compute_batch", "estimate_batch", "CostEstimate", "register_probe", "unregister_probe", "list_probes", "ProbeRun", "plan_compute", "StallError",
    "build_run_probe", "select_steps",
    "PairProbe", "induction_pair", "classifier_label_swap_pair", "pair_from_arrays", "pair_from_npy", "naive_patching",
    "load_model", "CheckpointModel", "run_with_cache", "ActivationCache", "ablate_head", "patch_head", "ablate_neuron",
    "patch_resid",
]
