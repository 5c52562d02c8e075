"""Inside one checkpoint: load a model, cache its activations by TransformerLens name, ablate and patch.

`load_model(run, step)` gives a batched Equinox model; `run_with_cache(model, inputs)` gives
`(logits, cache)`; `ablate_head`, `patch_head`, `ablate_neuron` and `patch_resid` give the logits
of an edited forward. `session_namespace` is what `scalars open RUN --step N` starts IPython with.
"""

from ._cache import HOOKS as HOOKS
from ._cache import ActivationCache as ActivationCache
from ._cache import Hook as Hook
from ._cache import run_with_cache as run_with_cache
from ._edits import ablate_head as ablate_head
from ._edits import ablate_neuron as ablate_neuron
from ._edits import patch_head as patch_head
from ._edits import patch_resid as patch_resid
from ._model import CheckpointModel as CheckpointModel
from ._model import load_model as load_model
from ._model import resolve_step as resolve_step
from ._session import banner as banner
from ._session import session_namespace as session_namespace

__all__ = ["load_model", "CheckpointModel", "resolve_step", "run_with_cache", "ActivationCache", "HOOKS", "Hook",
           "ablate_head", "patch_head", "ablate_neuron", "patch_resid", "session_namespace", "banner"]
