"""What each head and MLP neuron writes, and activation x gradient of the probe loss.

- `head_write_norm`, `neuron_write_norm`: the size of a component's write into the residual
  stream, mean over the probe's sequences and positions of its L2 norm (a head: `z_h W_O^h`,
  without b_O; a neuron: `|post_n| ||W_out[n]||`).
- `head_act_grad`, `neuron_act_grad`: `sum(a * dL/da)` over sequences, positions (and a head's
  value dimensions), with `a` a head's z or a neuron's post-activation and L the mean probe
  loss: the first-order estimate of L(clean) - L(a = 0), so about `loss - ablated_loss` for a
  head. The gradient is the total derivative (later layers recomputed), one backward per layer
  from that layer's clean residual stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..interventions import _ablation as iv
from ..registry import register

__all__ = ["head_writes", "neuron_writes", "act_grad"]

_HEAD = ("layer", "head")
_NEURON = ("layer", "neuron")


def head_writes(model, clean: dict) -> Float[Array, "layer head"]:
    """Mean over sequences and positions of ||z_h W_O^h||_2, per layer and head."""
    rows = []
    for block, out in zip(model.blocks, clean["layer_outputs"]):
        z = out["attn_output"]["z"]  # (B, H, T, e)
        writes = jnp.einsum("bhte,hed->bhtd", z, block.attn.W_O)
        rows.append(jnp.sqrt((writes ** 2).sum(-1)).mean(axis=(0, 2)))
    return jnp.stack(rows)


def neuron_writes(model, clean: dict) -> Float[Array, "layer neuron"]:
    """Mean over sequences and positions of |post_n| ||W_out[n]||_2, per layer and neuron."""
    return jnp.stack([jnp.abs(out["mlp_output"]["post"]).mean(axis=(0, 1)) * jnp.linalg.norm(block.mlp.W_out, axis=-1)
                      for block, out in zip(model.blocks, clean["layer_outputs"])])


def act_grad(model, probe, clean: dict, site: str) -> Array:
    """sum(a * dL/da) per layer and unit for `site` "z" (heads: summed over sequences, positions and
    value dims) or "post" (neurons); L is the mean probe loss, every later layer recomputed."""
    where, reduce = {"z": ("attn_output", (0, 2, 3)), "post": ("mlp_output", (0, 1))}[site]
    rows = []
    for layer, out in enumerate(clean["layer_outputs"]):
        act = out[where][site]

        def loss_of(a, layer=layer):
            logits = iv.run_from(model, layer, clean, {layer: {where: {site: a}}})
            return iv.probe_metrics(logits, probe)[0]

        rows.append((act * jax.grad(loss_of)(act)).sum(reduce))
    return jnp.stack(rows)


@register("head_write_norm", dims=_HEAD, units="residual-stream norm",
          description="mean over probe sequences and positions of ||z_h W_O^h||_2: the size of what head h writes "
                      "into the residual stream (b_O left out)")
def head_write_norm(model, probe, clean, ctx):
    return head_writes(model, clean)


@register("neuron_write_norm", dims=_NEURON, units="residual-stream norm",
          description="mean over probe sequences and positions of |post_n| ||W_out[n]||_2: the size of what MLP "
                      "neuron n writes into the residual stream (b_out left out; MLP models only)")
def neuron_write_norm(model, probe, clean, ctx):
    return neuron_writes(model, clean)


@register("head_act_grad", dims=_HEAD, units="nats",
          description="activation x gradient of the mean probe loss at head h's z, summed over sequences, positions "
                      "and value dims: first-order estimate of loss - (loss with z_h = 0), about loss - ablated_loss")
def head_act_grad(model, probe, clean, ctx):
    return act_grad(model, probe, clean, "z")


@register("neuron_act_grad", dims=_NEURON, units="nats",
          description="activation x gradient of the mean probe loss at MLP neuron n's post-activation, summed over "
                      "sequences and positions: first-order estimate of loss - (loss with the neuron at 0); MLP "
                      "models only")
def neuron_act_grad(model, probe, clean, ctx):
    return act_grad(model, probe, clean, "post")
