"""Built-in types about the model's outputs: probe metrics, logit lens, direct logit attribution.

Token probes score positions 0..S-2 predicting tokens 1..S-1; classifier probes score the
query (last position) against `labels[:, -1]`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ..registry import register

__all__ = ["direct_logit_attributions", "value_bias_writes"]


@register("loss", dims=(), units="nats",
          description="mean probe loss of the clean model (next-token CE over all predicted positions; the "
                      "query's CE on classifier probes)")
def loss(model, probe, clean, ctx):
    return ctx.clean_metrics()[0]


@register("accuracy", dims=(), units="fraction correct",
          description="mean probe accuracy of the clean model (argmax next token; the query's label on classifiers)")
def accuracy(model, probe, clean, ctx):
    return ctx.clean_metrics()[1]


@register("icl_accuracy", dims=(), probe="icl", requires="classifier", units="fraction correct",
          description="query accuracy on the run's in-context-learning eval set (held-out or relabeled classes)")
def icl_accuracy(model, probe, clean, ctx):
    return ctx.clean_metrics()[1]


@register("iwl_accuracy", dims=(), probe="iwl", requires="classifier", units="fraction correct",
          description="query accuracy on the run's in-weights-learning eval set (uninformative context)")
def iwl_accuracy(model, probe, clean, ctx):
    return ctx.clean_metrics()[1]


@register("logit_lens_loss", dims=("layer",), units="nats",
          description="probe loss of each layer's resid_post passed through the final LayerNorm and the unembedding")
def logit_lens_loss(model, probe, clean, ctx):
    return ctx.logit_lens_metrics()[0]


def value_bias_writes(block) -> Float[Array, "head d"]:
    """What each head writes at every position whatever it attends to: (ln1.b W_V + b_V) W_O.

    The pattern's rows sum to 1, so the constant part of v (the LN bias through W_V, plus b_V)
    reaches the residual stream unchanged; TransformerLens' `fold_value_biases` moves it into b_O."""
    attn = block.attn
    const = jnp.zeros(attn.W_V.shape[::2], attn.W_V.dtype)  # (H, e)
    if block.ln1.b is not None:
        const = const + jnp.einsum("d,hde->he", block.ln1.b, attn.W_V)
    if attn.b_V is not None:
        const = const + attn.b_V
    return jnp.einsum("he,hed->hd", const, attn.W_O)


def direct_logit_attributions(
    model, probe, clean: dict, *, fold_value_biases: bool = False
) -> Float[Array, "layer head"]:
    """Each head's result, centered and divided by the clean final-LN scale (frozen) and times
    the LN gain, dotted with W_U[:, correct] - mean_v W_U[:, v] (regression probes: with W_U[:, 0],
    the prediction, at the x tokens); mean over positions, sequences. `fold_value_biases`: the
    result without the head's constant value write (`value_bias_writes`), as TransformerLens's
    default `fold_value_biases=True`."""
    W_U = model.unembed_matrix  # (d, V)
    direction, positions = probe.input_kind.logit_direction(W_U, probe.arrays)  # (B, P, d)
    ln = model.ln_final
    out = []
    for block, layer_out in zip(model.blocks, clean["layer_outputs"]):
        result = layer_out["attn_output"]["result"][:, :, positions]  # (B, H, P, d)
        if fold_value_biases:
            result = result - value_bias_writes(block)[None, :, None, :]
        if ln.w is not None:
            scale = clean["ln_final_output"]["scale"][:, None, positions]  # (B, 1, P, 1)
            result = ln.linear_part(result, scale)  # centred (LayerNorm) or not (RMSNorm)
        out.append(jnp.einsum("bhpd,bpd->bhp", result, direction).mean((0, 2)))
    return jnp.stack(out)


def _check_fold_option(options, probe) -> None:
    if not isinstance(options["fold_value_biases"], bool):
        raise ValueError("direct_logit_attribution.fold_value_biases must be true or false, got "
                         f"{options['fold_value_biases']!r}")


@register("direct_logit_attribution", dims=("layer", "head"), units="logit", version=2,
          options={"fold_value_biases": False}, validate=_check_fold_option,
          description="head output's direct effect on the correct-minus-mean logit: result through the final LN "
                      "with its scale frozen at the clean value, averaged over predicted positions and sequences "
                      "(TransformerLens with fold_value_biases=False); option fold_value_biases=true leaves out the "
                      "head's constant value write (ln1.b W_V + b_V) W_O, as TransformerLens's default")
def direct_logit_attribution(model, probe, clean, ctx):
    return direct_logit_attributions(model, probe, clean, fold_value_biases=ctx.options["fold_value_biases"])
