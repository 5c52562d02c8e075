"""The built-in derived-scalar types: importing this package registers them (`scalars` does on import).

One module per family: attention scores, head ablations, outputs (metrics, logit lens, DLA),
weight compositions, icl-dynamics clamps, patching, regression, LLC, writes, reconstitution.
"""

from . import _ablation, _attention, _outputs, _weights  # noqa: F401
from . import _icl  # noqa: F401  (icl-dynamics progress measures: clamped-pattern losses)
from . import _patching  # noqa: F401  (activation, path and attribution patching on paired probes)
from . import _llc, _regression  # noqa: F401  (SGLD local learning coefficients; in-context regression)
from . import _writes  # noqa: F401  (write norms and activation x gradient, heads and MLP neurons)
from . import _reconstitution  # noqa: F401  (reconstituted attention from chosen residual streams)
