"""Importers of runs written by other codebases into ordinary run directories (they know the model)."""

from .icl_dynamics import checkpoint_files as checkpoint_files
from .icl_dynamics import eqx_record_layout as eqx_record_layout
from .icl_dynamics import icl_dynamics_label_pairs as icl_dynamics_label_pairs
from .icl_dynamics import icl_dynamics_model_config as icl_dynamics_model_config
from .icl_dynamics import icl_dynamics_probe as icl_dynamics_probe
from .icl_dynamics import icl_dynamics_task as icl_dynamics_task
from .icl_dynamics import import_icl_dynamics as import_icl_dynamics
from .icl_dynamics import load_icl_dynamics_checkpoint as load_icl_dynamics_checkpoint
from .icl_dynamics import load_icl_dynamics_model as load_icl_dynamics_model
from .icl_dynamics import metric_rows as metric_rows
from .icl_dynamics import read_eqx_records as read_eqx_records
from .icl_dynamics import read_icl_dynamics_config as read_icl_dynamics_config
from .icl_dynamics import read_log_h5 as read_log_h5
from .icl_dynamics import read_named_records as read_named_records
from .icl_dynamics_data import DataSource as DataSource
from .icl_dynamics_data import resolve_data_source as resolve_data_source
