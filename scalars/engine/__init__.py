"""The compute engine: plan a request, build one jitted program per checkpoint, run it over runs.

`plan` validates a request and lists missing cells; `compute` runs it with an executor
(`InProcess`, `Dask`); `estimate` measures what it would cost. Underneath: `make_compute_fn`
(every requested type for one checkpoint in one program), `run_plan` (one run's plan, streamed
and stored), `PROGRAM_CACHE` (compiled programs kept across runs of one architecture) and
`build_run_probe` (a run's named probes).
"""

from ._batch import BatchTask as BatchTask
from ._compute import Dask as Dask
from ._compute import Executor as Executor
from ._compute import InProcess as InProcess
from ._compute import compute as compute
from ._compute import estimate as estimate
from ._compute import plan as plan
from ._cost import CostEstimate as CostEstimate
from ._cost import format_estimate as format_estimate
from ._options import parse_type_options as parse_type_options
from ._plan import ComputePlan as ComputePlan
from ._plan import applicable_types as applicable_types
from ._plan import load_run_model_config as load_run_model_config
from ._program import ComputeFn as ComputeFn
from ._program import make_block_compute_fn as make_block_compute_fn
from ._program import make_compute_fn as make_compute_fn
from ._program import select_probe as select_probe
from ._program import stack_params as stack_params
from ._run import PROGRAM_CACHE as PROGRAM_CACHE
from ._run import CellWriter as CellWriter
from ._run import ComputeReport as ComputeReport
from ._run import ProgramCache as ProgramCache
from ._run import StallError as StallError
from ._run import run_plan as run_plan
from ._run_probes import build_run_probe as build_run_probe
from ._steps import select_steps as select_steps

__all__ = [
    "plan", "compute", "estimate", "InProcess", "Dask", "Executor", "ComputePlan", "ComputeReport", "StallError",
    "CostEstimate", "format_estimate", "BatchTask", "run_plan", "PROGRAM_CACHE", "ProgramCache", "CellWriter",
    "ComputeFn", "make_compute_fn", "make_block_compute_fn", "select_probe", "stack_params", "build_run_probe",
    "select_steps", "parse_type_options", "applicable_types", "load_run_model_config",
]
