"""Probes: the seeded, stored input batches derived scalars are measured on, and their registry.

A `Probe` holds one input kind's arrays (tokens, classifier sequences or regression contexts; the
kinds are `InputKind` objects that own shapes, checks and metrics). `repeated_tokens`, `from_npy`,
`from_classifier_arrays`, ... build one; `register_probe(name)` makes `--probe NAME` build one for
a run; `PairProbe` and its builders are the clean/corrupted pairs patching types read.
"""

from ._input_kinds import CLASSIFIER as CLASSIFIER
from ._input_kinds import REGRESSION as REGRESSION
from ._input_kinds import TOKENS as TOKENS
from ._input_kinds import InputKind as InputKind
from ._input_kinds import input_kind_of as input_kind_of
from ._input_kinds import register_input_kind as register_input_kind
from ._pairs import PairProbe as PairProbe
from ._pairs import classifier_label_swap_pair as classifier_label_swap_pair
from ._pairs import induction_pair as induction_pair
from ._pairs import pair_from_arrays as pair_from_arrays
from ._pairs import pair_from_npy as pair_from_npy
from ._probe import Probe as Probe
from ._probe import detect_repeat_length as detect_repeat_length
from ._probe import from_classifier_arrays as from_classifier_arrays
from ._probe import from_npy as from_npy
from ._probe import from_regression_arrays as from_regression_arrays
from ._probe import from_tokens as from_tokens
from ._probe import probe_from_arrays as probe_from_arrays
from ._probe import repeated_tokens as repeated_tokens
from ._registry import ProbeRun as ProbeRun
from ._registry import list_probes as list_probes
from ._registry import register_probe as register_probe
from ._registry import unregister_probe as unregister_probe

__all__ = [
    "Probe", "repeated_tokens", "from_tokens", "from_npy", "from_classifier_arrays", "from_regression_arrays",
    "probe_from_arrays", "detect_repeat_length", "PairProbe", "induction_pair", "classifier_label_swap_pair",
    "pair_from_arrays", "pair_from_npy", "register_probe", "unregister_probe", "list_probes", "ProbeRun",
    "InputKind", "register_input_kind", "input_kind_of", "TOKENS", "CLASSIFIER", "REGRESSION",
]
