"""Storage of runs: checkpoint archive, resume state, metrics and the scalar store (zarr + xarray).

Knows nothing of models: it stores dicts of named numpy arrays and labeled xarray Datasets.
"""

from . import dims as dims
from ._files import file_mode as file_mode
from ._schema import VariableSpec as VariableSpec
from ._schema import nearest_steps as nearest_steps
from ._unstarted import clear_unstarted_run as clear_unstarted_run
from ._unstarted import is_unstarted_run as is_unstarted_run
from .align import align_with_metrics as align_with_metrics
from .align import open_run as open_run
from .checkpoints import ArchiveReader as ArchiveReader
from .checkpoints import ArchiveWriter as ArchiveWriter
from .checkpoints import open_archive as open_archive
from .checkpoints import read_verified_block as read_verified_block
from .errors import StoreError as StoreError
from .references import ReferencedArchive as ReferencedArchive
from .references import register_decoder as register_decoder
from ._runs import flatten as flatten
from ._runs import register_coord_reader as register_coord_reader
from .export import export_scalars as export_scalars
from .metrics import MetricsWriter as MetricsWriter
from .metrics import open_metrics as open_metrics
from .resume import prune_resume_states as prune_resume_states
from .resume import read_resume_state as read_resume_state
from .resume import resume_steps as resume_steps
from .resume import write_resume_state as write_resume_state
from .run import SCHEMA_VERSION as SCHEMA_VERSION
from .run import is_run_dir as is_run_dir
from .run import read_run_json as read_run_json
from .run import run_lock as run_lock
from .run import write_run_json as write_run_json
from .scalars_store import check_variables as check_variables
from .scalars_store import clear_cells as clear_cells
from .scalars_store import commit_replacements as commit_replacements
from .scalars_store import computed_mask as computed_mask
from .scalars_store import discard_replacements as discard_replacements
from .scalars_store import ensure_variables as ensure_variables
from .scalars_store import missing_steps as missing_steps
from .scalars_open import open_scalars as open_scalars
from .scalars_store import stored_steps as stored_steps
from .scalars_store import write_cells as write_cells
from .verify import verify_archive as verify_archive
from .verify import verify_scalars as verify_scalars

__all__ = [
    "dims", "StoreError", "file_mode", "SCHEMA_VERSION", "write_run_json", "read_run_json", "is_run_dir", "run_lock",
    "is_unstarted_run", "clear_unstarted_run",
    "register_coord_reader", "flatten",
    "ArchiveWriter", "ArchiveReader", "ReferencedArchive", "register_decoder", "open_archive", "read_verified_block", "verify_archive",
    "write_resume_state", "read_resume_state", "resume_steps", "prune_resume_states",
    "MetricsWriter", "open_metrics",
    "VariableSpec", "nearest_steps", "ensure_variables", "commit_replacements", "discard_replacements", "write_cells", "clear_cells", "computed_mask", "missing_steps",
    "stored_steps", "open_scalars", "verify_scalars",
    "align_with_metrics", "open_run", "export_scalars",
]
