"""Built-in types of in-context linear regression runs: loss by context position and the distance
of the model's predictions to the Bayes baselines (Raventós et al. 2023).

`pos` is the context position k = 0..K-1: the prediction of y_k at the x_k token, after k
(x, y) pairs. The probe (`regression`: fresh Gaussian tasks; `regression_pool`: the run's
training tasks) carries the ridge and dMMSE predictions, so the baselines are computed once, in
float64, when the probe is built.
"""

from __future__ import annotations

import jax
from jaxtyping import Array, Float

from trainer.model import regression_predictions

from ..registry import register

__all__ = ["model_predictions"]


def model_predictions(clean: dict) -> Float[Array, "B K"]:
    """The model's prediction of y_k at every context position, for every probe sequence."""
    return jax.vmap(regression_predictions)(clean["logits"])


def _baseline(probe, name: str):
    if name not in probe.arrays:
        raise ValueError(f"probe '{probe.name}' has no '{name}' predictions; use the run's regression probe or add "
                         f"a '{name}' array (B, K) to the .npz file")
    return probe.arrays[name]


@register("icl_regression_loss", dims=("pos",), probe="default", requires="regression", units="squared error",
          description="mean over probe sequences of (prediction of y_k - y_k)^2 at context position k "
                      "(k pairs seen)")
def icl_regression_loss(model, probe, clean, ctx):
    return ((model_predictions(clean) - probe.arrays["ys"]) ** 2).mean(0)


@register("delta_ridge", dims=("pos",), probe="default", requires="regression", units="squared error",
          description="mean over probe sequences of (model prediction - ridge prediction)^2 at context position k; "
                      "ridge = posterior mean under the Gaussian task prior (optimal for infinite task diversity)")
def delta_ridge(model, probe, clean, ctx):
    return ((model_predictions(clean) - _baseline(probe, "ridge")) ** 2).mean(0)


@register("delta_dmmse", dims=("pos",), probe="default", requires="regression", units="squared error",
          description="mean over probe sequences of (model prediction - dMMSE prediction)^2 at context position k; "
                      "dMMSE = posterior mean over the run's M training tasks (ridge when M is infinite)")
def delta_dmmse(model, probe, clean, ctx):
    return ((model_predictions(clean) - _baseline(probe, "dmmse")) ** 2).mean(0)
