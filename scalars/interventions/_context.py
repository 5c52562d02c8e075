"""The `ctx` a type function receives: its options and memoized intervention helpers.

All types computed on one probe in one program share a context, so `ablated_loss` and
`ablated_accuracy` reuse the same ablation forwards. `Context` uses the prefix-reusing
functions of `_ablation`; `NaiveContext` (tests, `naive_compute`) full forwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _fast_ablation as fa
from . import _ablation as iv
from ._reductions import leading_mean

__all__ = ["Context"]


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """Helpers for one probe's clean run. `options` are the current type's resolved options.

    Patterns are `(layer, head, T, T)` batch means (the tables' `A`); metrics are the probe's
    mean loss and accuracy (next-token for token probes, the query for classifier probes).
    """

    model: Any
    probe: Any
    clean: dict
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    head_batching: str = "map"
    _memo: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def config(self):
        return self.model.config

    def for_type(self, options: Mapping[str, Any]) -> "Context":
        """This context with another type's options (the memo is shared)."""
        return dataclasses.replace(self, options=dict(options))

    def memo(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """`fn()` computed once per context (per compiled program) for `key`."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    # -- clean-run quantities -------------------------------------------------------------
    def mean_patterns(self) -> Float[Array, "layer head T T"]:
        """Attention pattern of every head averaged over the probe sequences."""
        return self.memo("mean_patterns", lambda: jnp.stack(
            [leading_mean(out["attn_output"]["pattern"]) for out in self.clean["layer_outputs"]]))

    def patterns(self) -> list[Float[Array, "B head T T"]]:
        """Per-sequence attention patterns, one array per layer."""
        return [out["attn_output"]["pattern"] for out in self.clean["layer_outputs"]]

    def metrics(self, logits: Float[Array, "B T V"]) -> tuple[Array, Array]:
        """Mean probe loss and accuracy of batched logits."""
        return iv.probe_metrics(logits, self.probe)

    def clean_metrics(self) -> tuple[Array, Array]:
        return self.memo("clean_metrics", lambda: self.metrics(self.clean["logits"]))

    def logit_lens_metrics(self) -> tuple[Float[Array, " layer"], Float[Array, " layer"]]:
        return self.memo("logit_lens", lambda: iv.logit_lens_metrics(self.model, self.probe, self.clean))

    # -- interventions --------------------------------------------------------------------
    def head_ablation_metrics(self, *, preserve: str | None = None, ablation: str = "zero"):
        """(loss, accuracy), each (layer, head): the probe metrics with one head removed."""
        if preserve is None and fa.unsupported(self.config) is None:
            # the residual identity: layer l's attention is not re-run (_fast_ablation)
            return self.memo(("heads", preserve, ablation), lambda: fa.head_ablation_metrics(
                self.model, self.probe, self.clean, ablation=ablation, head_batching=self.head_batching))
        return self.memo(("heads", preserve, ablation), lambda: iv.head_ablation_metrics(
            self.model, self.probe, self.clean, preserve=preserve, ablation=ablation,
            head_batching=self.head_batching))

    def layer_removal_metrics(self, *, ablation: str = "zero"):
        """(loss, accuracy), each (layer,): all heads of a layer removed, other layers'
        patterns and values held at clean values."""
        return self.memo(("layers", ablation), lambda: iv.layer_removal_metrics(
            self.model, self.probe, self.clean, ablation=ablation))

    def reconstituted_scores(self, side: str, score_fn: Callable[[Array], Array]):
        """(layer, head, src_layer, src_head): `score_fn` of the recomputed batch-mean pattern
        (H, T, T) -> (H,) with the src head removed from the query or key side; NaN if s >= l."""
        return self.memo(("reconstituted", side, score_fn), lambda: iv.reconstituted_scores(
            self.model, self.clean, side, score_fn, head_batching=self.head_batching))
