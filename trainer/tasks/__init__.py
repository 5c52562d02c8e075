"""Synthetic training tasks: induction LM, bursty ICL classification, in-context linear regression,
mixtures; pure-JAX samplers, and the registry of `Task`s by `task.kind` (`register_task`)."""

from ._icl import ICLTaskConfig as ICLTaskConfig
from ._icl import icl_dynamics_config as icl_dynamics_config
from ._icl import sample_icl_batch as sample_icl_batch
from ._icl_data import ICLDataConfig as ICLDataConfig
from ._icl_data import load_exemplars as load_exemplars
from ._icl_data import load_h5_dataset as load_h5_dataset
from ._icl_data import synthetic_clusters as synthetic_clusters
from ._icl_eval import make_eval_sets as make_eval_sets
from ._icl_formats import SEQUENCE_FORMATS as SEQUENCE_FORMATS
from ._icl_formats import SequenceFormat as SequenceFormat
from ._icl_formats import register_sequence_format as register_sequence_format
from ._icl_labels import ICL_DYNAMICS_TRAIN_PAIRS as ICL_DYNAMICS_TRAIN_PAIRS
from ._icl_labels import ICL_DYNAMICS_VAL_PAIRS as ICL_DYNAMICS_VAL_PAIRS
from ._icl_labels import class_label_map as class_label_map
from ._icl_labels import relabel_pair_split as relabel_pair_split
from ._icl_probe import icl_dynamics_probe_for as icl_dynamics_probe_for
from ._icl_probe import icl_dynamics_probe_set as icl_dynamics_probe_set
from ._induction import InductionTaskConfig as InductionTaskConfig
from ._induction import markov_transition_matrix as markov_transition_matrix
from ._induction import repeated_tokens_probe as repeated_tokens_probe
from ._induction import sample_induction_batch as sample_induction_batch
from ._mixture import MixtureTaskConfig as MixtureTaskConfig
from ._mixture import sample_mixture_batch as sample_mixture_batch
from ._regression import RegressionTaskConfig as RegressionTaskConfig
from ._regression import regression_eval_batch as regression_eval_batch
from ._regression import regression_eval_sets as regression_eval_sets
from ._regression import sample_regression_batch as sample_regression_batch
from ._regression import task_pool as task_pool
from ._regression_baselines import bayes_predictions as bayes_predictions
from ._regression_baselines import dmmse_predictions as dmmse_predictions
from ._regression_baselines import ridge_predictions as ridge_predictions
from ._sample import TaskConfig as TaskConfig
from ._sample import sample_batch as sample_batch
from ._base import TASKS as TASKS
from ._base import Task as Task
from ._base import build_task as build_task
from ._base import register_task as register_task
from ._base import task_config as task_config
from ._base import task_offers_eval_set_probes as task_offers_eval_set_probes
from ._base import task_probe_defaults as task_probe_defaults
# the built-in tasks, registered in this order (the order `unknown task.kind` lists them in)
from ._task_induction import InductionTask as InductionTask  # noqa: I001
from ._task_icl import ICLTask as ICLTask
from ._task_regression import RegressionTask as RegressionTask
from ._task_regression import regression_metrics as regression_metrics
from ._task_mixture import MixtureTask as MixtureTask
