"""Built-in types that remove heads: probe loss / accuracy with one head (or a layer) ablated.

Removing a head sets its z to 0 (zero ablation; the shared output bias stays), to its mean
over the probe's sequences and positions (`mean`) or to its mean over sequences at each position
(`mean_per_position`), as editing TransformerLens's `hook_z` (docs/definitions.md). The metric is
the probe's own: mean next-token loss on token probes, query loss on classifiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..interventions._ablation import ABLATIONS
from ..registry import register

HEAD_DIMS = ("layer", "head")
ABLATION = {"ablation": "zero"}
CHOICES = " | ".join(ABLATIONS)


def _check_ablation(options: Mapping[str, Any], probe) -> None:
    """Refuse an unknown `ablation` when the request is planned, before anything is computed."""
    if options["ablation"] not in ABLATIONS:
        raise ValueError(f"option ablation must be one of {', '.join(ABLATIONS)}, got {options['ablation']!r}")


def _ablation_type(name: str, description: str, **kwargs):
    """`register` for a type with the `ablation` option (checked at planning)."""
    return register(name, dims=HEAD_DIMS, options=ABLATION, validate=_check_ablation, description=description,
                    **kwargs)


def _heads(ctx, which: int, *, preserve=None, ablation=None):
    return ctx.head_ablation_metrics(preserve=preserve, ablation=ablation or ctx.options["ablation"])[which]


@_ablation_type("ablated_loss", units="nats",
                description=f"probe loss with one head's z ablated (option ablation: {CHOICES}; mean pools over "
                            "sequences and positions, mean_per_position over sequences only)")
def ablated_loss(model, probe, clean, ctx):
    return _heads(ctx, 0)


@_ablation_type("ablated_accuracy", units="fraction correct",
                description=f"probe accuracy with one head's z ablated (option ablation: {CHOICES}; mean pools "
                            "over sequences and positions, mean_per_position over sequences only)")
def ablated_accuracy(model, probe, clean, ctx):
    return _heads(ctx, 1)


@register("ablated_loss_mean", dims=HEAD_DIMS, units="nats",
          description="probe loss with one head's z replaced by its mean over probe sequences and positions "
                      "(= ablated_loss with ablation=mean)")
def ablated_loss_mean(model, probe, clean, ctx):
    return _heads(ctx, 0, ablation="mean")


@register("ablated_accuracy_mean", dims=HEAD_DIMS, units="fraction correct",
          description="probe accuracy with one head's z replaced by its mean over probe sequences and positions "
                      "(= ablated_accuracy with ablation=mean)")
def ablated_accuracy_mean(model, probe, clean, ctx):
    return _heads(ctx, 1, ablation="mean")


@_ablation_type("ablated_loss_pattern_preserving", units="nats",
                description="probe loss with one head ablated and the attention patterns of later layers held at "
                            "their clean values (only the value/direct paths carry the ablation; option ablation "
                            "as ablated_loss)")
def ablated_loss_pattern_preserving(model, probe, clean, ctx):
    return _heads(ctx, 0, preserve="pattern")


@_ablation_type("ablated_loss_value_preserving", units="nats",
                description="probe loss with one head ablated, the values (v) of later layers held at their clean "
                            "values and their patterns recomputed (only the query/key and direct paths carry it; "
                            "option ablation as ablated_loss)")
def ablated_loss_value_preserving(model, probe, clean, ctx):
    return _heads(ctx, 0, preserve="value")


@register("layer_removal_loss", dims=("layer",), units="nats", options=ABLATION, validate=_check_ablation,
          description="probe (query) loss with all heads of a layer ablated, the patterns and values of the "
                      "other layers held at their clean values (option ablation as ablated_loss)")
def layer_removal_loss(model, probe, clean, ctx):
    return ctx.layer_removal_metrics(ablation=ctx.options["ablation"])[0]
