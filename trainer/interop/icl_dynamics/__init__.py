"""Import runs of the public `aadityasingh/icl-dynamics` code (Singh et al. 2024) as ordinary run dirs.

A run folder holds `config.json`, `checkpoints/NNNNNNNNNNN.eqx` (N = training sequences seen)
and `log.h5`. A `.eqx` file is NPY records back to back (equinox `tree_serialise_leaves` of
`{iter, model, opt_state, seeds}`); `eqx_record_layout` names every record from the config,
`load_icl_dynamics_checkpoint` maps the weights onto this project's classifier
(`icl_dynamics_model_config`), `read_log_h5` reads the training log, and
`import_icl_dynamics` writes `run.json`, `checkpoints.zarr` and `metrics.zarr`. Steps stay in
the original unit, training sequences; the Adam step is `sequences / train_bs`.
Formats follow the fixture README (tests/fixtures/icl-dynamics/README.md, sections 4-9).
"""

from ._records import RecordSpec as RecordSpec
from ._records import eqx_record_layout as eqx_record_layout
from ._records import read_eqx_records as read_eqx_records
from ._records import read_named_records as read_named_records
from ._config import icl_dynamics_model_config as icl_dynamics_model_config
from ._weights import load_icl_dynamics_checkpoint as load_icl_dynamics_checkpoint
from ._weights import load_icl_dynamics_model as load_icl_dynamics_model
from ._log import read_log_h5 as read_log_h5
from ._log import metric_rows as metric_rows
from ._task import icl_dynamics_task as icl_dynamics_task
from ._task import icl_dynamics_label_pairs as icl_dynamics_label_pairs
from ._task import icl_dynamics_probe as icl_dynamics_probe
from ._config import read_icl_dynamics_config as read_icl_dynamics_config
from ._config import checkpoint_files as checkpoint_files
from ._import import import_icl_dynamics as import_icl_dynamics
from .data import DataSource as DataSource
from .data import resolve_data_source as resolve_data_source

__all__ = [
    "RecordSpec",
    "eqx_record_layout",
    "read_eqx_records",
    "read_named_records",
    "icl_dynamics_model_config",
    "load_icl_dynamics_checkpoint",
    "load_icl_dynamics_model",
    "read_log_h5",
    "metric_rows",
    "icl_dynamics_task",
    "icl_dynamics_label_pairs",
    "icl_dynamics_probe",
    "read_icl_dynamics_config",
    "checkpoint_files",
    "import_icl_dynamics",
    "DataSource",
    "resolve_data_source",
]
