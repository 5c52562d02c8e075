"""Imports the modules that register the built-in types (done lazily by the registry)."""

from . import _ablation_types, _attention_types, _output_types, _weight_types  # noqa: F401
from . import _icl_types  # noqa: F401,E402  (icl-dynamics progress measures: clamped-pattern losses)
from . import _patch_types  # noqa: F401,E402  (activation, path and attribution patching on paired probes)
from . import _llc, _regression_types  # noqa: F401,E402  (SGLD local learning coefficients; in-context regression)
from . import _write_types  # noqa: F401,E402  (write norms and activation x gradient, heads and MLP neurons)
from . import _reconstitution_types  # noqa: F401,E402  (reconstituted attention from chosen residual streams)
