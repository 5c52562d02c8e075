"""Built-in patching types on a paired probe: activation, path and attribution patching, pair DLA.

Each reads the `default_pair` probe (`induction_pair` on token models, `label_swap_pair` on
classifiers; a plain repeated-token or classifier probe is paired the same way). Values are the
normalised effect `(patched - corrupt) / (clean - corrupt)` of the pair's metric (option `metric`:
loss, logit_diff or accuracy; default the pair's), NaN where |clean - corrupt| < `min_gap` (0.1
metric units: before a circuit forms the pair separates nothing and the ratio is noise), or
`patched - corrupt` with `normalize=False`.
Attribution types give the first-order estimate of the same number. Types share the corrupted
run and the gradients through the context memo.
"""

from __future__ import annotations

import jax

from ..interventions import _patching as pt
from ..probes._pairs import as_pair, check_metric, corrupt_inputs, metric_name
from ..registry import register

__all__ = ["pair_setup"]

PAIR_PROBE = "default_pair"
OPTIONS = {"metric": None, "normalize": True, "min_gap": 0.1}
UNITS = "fraction of the clean-corrupt metric gap (metric units with normalize=False)"
GAP_NAN = ("every cell of a checkpoint is NaN where the clean and corrupted metrics differ by less than min_gap "
           "(default 0.1): the pair does not separate them there, so an effect normalised by that gap is undefined "
           "(--option TYPE.min_gap=0 or TYPE.normalize=false gives raw values); path cells are NaN also where no "
           "path exists (the source layer is not before the destination)")
PATH_DIMS = ("layer", "head", "dst_layer", "dst_head", "side")
SIDE_COORDS = {"side": pt.SIDES}


def pair_setup(ctx, type_name: str):
    """(pair, metric, corrupted run, clean metric, corrupted metric), memoized per program."""
    pair = ctx.memo(("pair",), lambda: as_pair(ctx.probe, ctx.config, type_name))
    metric = check_metric(ctx.options.get("metric") or metric_name(pair), f"type '{type_name}'")
    corrupt = ctx.memo(("pair_corrupt",), lambda: jax.vmap(ctx.model.call_with_all_aux)(corrupt_inputs(pair)))
    m_clean = ctx.memo(("pair_metric", "clean", metric), lambda: pt.pair_metric(ctx.clean["logits"], pair, metric))
    m_corrupt = ctx.memo(("pair_metric", "corrupt", metric), lambda: pt.pair_metric(corrupt["logits"], pair, metric))
    return pair, metric, corrupt, m_clean, m_corrupt


def _exact(ctx, name: str, compute):
    pair, metric, corrupt, m_clean, m_corrupt = pair_setup(ctx, name)
    value = ctx.memo((name, metric), lambda: compute(ctx.model, pair, ctx.clean, corrupt, metric, ctx.head_batching))
    return _normalise(ctx, value - m_corrupt, m_clean - m_corrupt)


def _attribution(ctx, name: str, compute):
    pair, metric, corrupt, m_clean, m_corrupt = pair_setup(ctx, name)
    _, grads = ctx.memo(("attribution_grads", metric), lambda: pt.attribution_grads(ctx.model, pair, corrupt, metric))
    return _normalise(ctx, compute(ctx.clean, corrupt, grads), m_clean - m_corrupt)


def _normalise(ctx, diff, gap):
    return pt.normalised(diff, gap, bool(ctx.options["normalize"]), float(ctx.options["min_gap"]))


# -- exact patching --------------------------------------------------------------------------
@register("patch_resid", dims=("layer", "pos"), probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
          description="activation patching: the clean resid_pre of one layer at one position put into the "
                      "corrupted run; normalised effect on the pair metric")
def patch_resid(model, probe, clean, ctx):
    return _exact(ctx, "patch_resid", pt.resid_patch_metrics)


def _head_type(what: str):
    def compute(model, pair, clean, corrupt, metric, head_batching):
        return pt.head_patch_metrics(model, pair, clean, corrupt, metric, what, head_batching)

    def fn(model, probe, clean, ctx):
        return _exact(ctx, f"patch_head_{what}", compute)

    return fn


register("patch_head_output", dims=("layer", "head"), probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
         description="activation patching: one head's clean output (z) put into the corrupted run; normalised "
                     "effect on the pair metric")(_head_type("output"))
register("patch_head_pattern", dims=("layer", "head"), probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
         description="activation patching: only one head's clean attention pattern, applied to its corrupted "
                     "values; normalised effect on the pair metric")(_head_type("pattern"))
register("patch_head_value", dims=("layer", "head"), probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
         description="activation patching: only one head's clean values (v), read with its corrupted pattern; "
                     "normalised effect on the pair metric")(_head_type("value"))


@register("path_patch", dims=PATH_DIMS, probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN, sizes=SIDE_COORDS,
          description="path patching: sender head (layer, head)'s clean-minus-corrupted output added only to the "
                      "q, k or v input of receiver (dst_layer, dst_head) in the corrupted run, later blocks "
                      "recomputed; normalised effect; NaN where dst_layer <= layer")
def path_patch(model, probe, clean, ctx):
    return _exact(ctx, "path_patch", pt.path_patch_metrics)


# -- attribution patching --------------------------------------------------------------------
@register("attribution_patch_resid", dims=("layer", "pos"), probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
          description="attribution patching (first order) of patch_resid: (clean - corrupted resid_pre) . "
                      "d metric / d resid_pre at the corrupted run, normalised")
def attribution_patch_resid(model, probe, clean, ctx):
    return _attribution(ctx, "attribution_patch_resid", lambda c, x, g: pt.attribution_resid(c, x, g))


def _attribution_head_type(what: str):
    def fn(model, probe, clean, ctx):
        return _attribution(ctx, f"attribution_patch_head_{what}", lambda c, x, g: pt.attribution_heads(c, x, g, what))

    return fn


for _what, _act in (("output", "z"), ("pattern", "pattern"), ("value", "v")):
    register(f"attribution_patch_head_{_what}", dims=("layer", "head"), probe=PAIR_PROBE, units=UNITS,
             options=OPTIONS, nan_means=GAP_NAN,
             description=f"attribution patching (first order) of patch_head_{_what}: (clean - corrupted {_act}) . "
                         f"d metric / d {_act} at the corrupted run, normalised")(_attribution_head_type(_what))


@register("attribution_patch_path", dims=PATH_DIMS, probe=PAIR_PROBE, units=UNITS, options=OPTIONS, nan_means=GAP_NAN,
          sizes=SIDE_COORDS,
          description="attribution patching (first order) of path_patch: the sender's output difference pushed "
                      "through the receiver's LayerNorm and q/k/v projection, dotted with d metric / d q, k, v")
def attribution_patch_path(model, probe, clean, ctx):
    return _attribution(ctx, "attribution_patch_path",
                        lambda c, x, g: pt.attribution_paths(model, c, x, g, ctx.head_batching))


# -- the pair's metric and its direct attribution --------------------------------------------
@register("pair_metric_clean", dims=(), probe=PAIR_PROBE, units="metric units", options={"metric": None},
          description="the pair metric on the clean inputs (the 1 of the normalised patching effects)")
def pair_metric_clean(model, probe, clean, ctx):
    return pair_setup(ctx, "pair_metric_clean")[3]


@register("pair_metric_corrupt", dims=(), probe=PAIR_PROBE, units="metric units", options={"metric": None},
          description="the pair metric on the corrupted inputs (the 0 of the normalised patching effects)")
def pair_metric_corrupt(model, probe, clean, ctx):
    return pair_setup(ctx, "pair_metric_corrupt")[4]


@register("logit_diff_attribution", dims=("layer", "head"), probe=PAIR_PROBE, units="logit",
          description="direct logit attribution on the pair: each head's clean output through the final LN (scale "
                      "frozen) onto W_U[answer] - W_U[wrong answer], mean over answer positions and sequences")
def logit_diff_attribution(model, probe, clean, ctx):
    pair = pair_setup(ctx, "logit_diff_attribution")[0]
    return pt.logit_diff_attributions(model, pair, clean)


@register("logit_diff_lens", dims=("layer",), probe=PAIR_PROBE, units="logit",
          description="logit lens on the pair: answer-minus-wrong logit of each layer's clean resid_post through the "
                      "final LN and the unembedding")
def logit_diff_lens(model, probe, clean, ctx):
    pair = pair_setup(ctx, "logit_diff_lens")[0]
    return pt.logit_diff_lens(model, pair, clean)
