"""Built-in types that remove heads: probe loss / accuracy with one head (or a layer) ablated.

Removing a head sets its z to 0 (zero ablation; the shared output bias stays) or to its mean
over the probe's sequences and positions (mean ablation), as editing TransformerLens's `hook_z`.
The metric is the probe's own: mean next-token loss on token probes, query loss on classifiers.
"""

from __future__ import annotations

from ._registry import register

HEAD_DIMS = ("layer", "head")
ABLATION = {"ablation": "zero"}


def _heads(ctx, which: int, *, preserve=None, ablation=None):
    return ctx.head_ablation_metrics(preserve=preserve, ablation=ablation or ctx.options["ablation"])[which]


@register("ablated_loss", dims=HEAD_DIMS, units="nats", options=ABLATION,
          description="probe loss with one head's z ablated (option ablation: zero or mean)")
def ablated_loss(model, probe, clean, ctx):
    return _heads(ctx, 0)


@register("ablated_accuracy", dims=HEAD_DIMS, units="fraction correct", options=ABLATION,
          description="probe accuracy with one head's z ablated (option ablation: zero or mean)")
def ablated_accuracy(model, probe, clean, ctx):
    return _heads(ctx, 1)


@register("ablated_loss_mean", dims=HEAD_DIMS, units="nats",
          description="probe loss with one head's z replaced by its mean over probe sequences and positions")
def ablated_loss_mean(model, probe, clean, ctx):
    return _heads(ctx, 0, ablation="mean")


@register("ablated_accuracy_mean", dims=HEAD_DIMS, units="fraction correct",
          description="probe accuracy with one head's z replaced by its mean over probe sequences and positions")
def ablated_accuracy_mean(model, probe, clean, ctx):
    return _heads(ctx, 1, ablation="mean")


@register("ablated_loss_pattern_preserving", dims=HEAD_DIMS, units="nats", options=ABLATION,
          description="probe loss with one head ablated and the attention patterns of later layers held at "
                      "their clean values (only the value/direct paths carry the ablation)")
def ablated_loss_pattern_preserving(model, probe, clean, ctx):
    return _heads(ctx, 0, preserve="pattern")


@register("ablated_loss_value_preserving", dims=HEAD_DIMS, units="nats", options=ABLATION,
          description="probe loss with one head ablated, the values (v) of later layers held at their clean "
                      "values and their patterns recomputed (only the query/key and direct paths carry it)")
def ablated_loss_value_preserving(model, probe, clean, ctx):
    return _heads(ctx, 0, preserve="value")


@register("layer_removal_loss", dims=("layer",), units="nats", options=ABLATION,
          description="probe (query) loss with all heads of a layer ablated, the patterns and values of the "
                      "other layers held at their clean values")
def layer_removal_loss(model, probe, clean, ctx):
    return ctx.layer_removal_metrics(ablation=ctx.options["ablation"])[0]
