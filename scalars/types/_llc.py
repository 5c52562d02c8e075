"""Local learning coefficient types (developmental interpretability; Lau et al. 2023, Hoogland et al.
2024, Wang et al. 2024): `llc`, the per-head refined `rllc`, and `sgld_diagnostics`.

The loss is the probe's mean loss (next-token cross-entropy on token probes, the query's
cross-entropy on classifier probes, squared error on regression probes) as a function of the
parameters; n = the probe's number of sequences. The probe is the run's training distribution
where one exists (`default_train`: `regression_pool` for regression runs; the default probe
otherwise). Data-refined variants: run on another probe (`--probe regression` for Gaussian tasks
on a finite-M run, a `.npz` file). The SGLD settings are the types' options (stored
in the variable's attrs); see `scalars.interventions._sgld` for the sampler and the estimator. The types are
opt-in (never computed by `--all`): about 1.4 s per checkpoint for `llc` with the defaults on
the icl-regression model (2 CPU cores), about 3.4 times that for `rllc` over its 8 heads (each
head's chains re-run only the blocks from its layer on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ..interventions import _ablation as iv
from ..registry import register
from ..interventions._sgld import STATS, STATUS, SGLDSettings, chain_diagnostics, llc_from_losses, n_params, sgld_losses

__all__ = ["SGLD_OPTIONS", "probe_loss_fn", "head_param_names", "SGLD_TYPES"]

SGLD_OPTIONS: dict[str, Any] = {
    "step_size": 1e-4,  # epsilon
    "gamma": 100.0,  # localization strength
    "beta": None,  # inverse temperature; None: 1 / log n
    "chains": 4,
    # 400 + 400 steps settle (status 0: R-hat ~1.00, no common drift) at every checkpoint tested of
    # the icl-regression preset, where 20 + 80 left late checkpoints at about half their settled
    # value (benchmarks/bench_llc_settle.py, benchmarks/RESULTS.md)
    "draws": 400,  # recorded steps per chain
    "burn_in": 400,  # steps per chain before the draws
    "batch_size": 8,  # minibatch of probe sequences per step (None: all)
    "seed": 0,
    "chain_batching": "auto",  # vmap | map | auto
    "diverge_factor": 10.0,  # a chain diverged if n beta (L - L(w*)) > diverge_factor * sampled parameters
}
SGLD_TYPES = ("llc", "rllc", "sgld_diagnostics")
HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


def _settings(options: Mapping[str, Any], probe) -> SGLDSettings:
    return SGLDSettings.from_options({k: options[k] for k in SGLD_OPTIONS}, probe.batch_size)


def _subset(probe, idx):
    return probe.with_arrays({k: v[idx] for k, v in probe.arrays.items()})


def probe_loss_fn(model, probe):
    """(params, loss_fn(params, indices)): the mean probe loss over sequences `indices` as a
    function of the model's array leaves."""
    params, static = eqx.partition(model, eqx.is_array)

    def loss_fn(p, idx):
        sub = _subset(probe, idx)
        logits = jax.vmap(eqx.combine(p, static))(sub.inputs)
        return iv.probe_metrics(logits, sub)[0]

    return params, loss_fn


def head_param_names(attn) -> tuple[str, ...]:
    """The per-head parameter arrays of an attention layer (q/k/v biases only if the model has them).
    With grouped-query attention a query head owns only its Q and O slices (K and V are shared by its
    group), so W_K, W_V, b_K and b_V are left out."""
    shared = ("W_K", "W_V", "b_K", "b_V") if attn.group_size > 1 else ()
    return tuple(n for n in HEAD_PARAMS if getattr(attn, n) is not None and n not in shared)


def _head_loss_fn(model, probe, clean: dict, layer: int):
    """loss_fn(head_params, head, indices): probe loss with one head's Q, K, V, O slices replaced,
    re-running only blocks `layer..` from the clean residual stream (all else held at w*)."""
    resid = clean["layer_outputs"][layer]["resid_pre"]
    attn = model.blocks[layer].attn
    names = head_param_names(attn)

    def loss_fn(head_params, head, idx):
        new = [getattr(attn, n).at[head].set(head_params[n]) for n in names]
        edited = eqx.tree_at(lambda m: [getattr(m.blocks[layer].attn, n) for n in names], model, new)
        sub = _subset(probe, idx)
        logits = jax.vmap(lambda r: edited.forward_from(layer, r)["out"])(resid[idx])
        return iv.probe_metrics(logits, sub)[0]

    return names, loss_fn


def _validate(options: Mapping[str, Any], probe) -> None:
    """Bad SGLD options fail when the request is planned (nothing computed or stored)."""
    _settings(options, probe)


def _full_sgld(model, probe, ctx):
    settings = _settings(ctx.options, probe)

    def run():
        params, loss_fn = probe_loss_fn(model, probe)
        init, losses = sgld_losses(loss_fn, params, probe.batch_size, settings)
        return init, losses, n_params(params)

    return settings, ctx.memo(("sgld_full", settings), run)


def _nan_check(step: int, value, options) -> str | None:
    value = np.asarray(value)
    if np.isnan(value).any():
        where = "" if value.ndim == 0 else f" for {int(np.isnan(value).sum())} of {value.size} heads"
        return (f"the SGLD estimate is NaN{where}: chains diverged or the loss at the checkpoint is not finite "
                f"(stored NaN); lower step_size (now {options['step_size']}) or raise gamma (now "
                f"{options['gamma']}), and compute sgld_diagnostics to see the chains")
    return None


def _diagnostics_check(step: int, value, options) -> str | None:
    value = np.asarray(value)
    status = int(value[STATS.index("status")])
    if status == 0:
        return None
    n_bad = int(value[STATS.index("diverged_chains")])
    detail = f" ({n_bad} of {options['chains']} chains)" if status == 1 else ""
    if status == 4:
        llc = value[STATS.index("nbeta")] * (value[STATS.index("mean_loss")] - value[STATS.index("init_loss")])
        detail = (f" (llc {llc:.3g}, R-hat {value[STATS.index('rhat')]:.3f}, mean drift "
                  f"{value[STATS.index('mean_drift')]:.3g}; now burn_in={options['burn_in']}, "
                  f"draws={options['draws']}, step_size={options['step_size']:g})")
    return f"SGLD status {status}: {STATUS[status]}{detail}"


_LLC_DOC = ("local learning coefficient: SGLD estimate n beta (E[L_n(w)] - L_n(w*)) over the localized tempered "
            "posterior at the checkpoint w*, beta = 1/log n, n = probe sequences")


@register("llc", dims=(), probe="default_train", units="LLC (dimensionless)", options=SGLD_OPTIONS, opt_in=True,
          check=_nan_check, validate=_validate,
          description=_LLC_DOC + "; NaN when chains diverge (see sgld_diagnostics); opt-in (not part of --all)")
def llc(model, probe, clean, ctx):
    settings, (init, losses, d) = _full_sgld(model, probe, ctx)
    return llc_from_losses(init, losses, settings.nbeta(probe.batch_size), d, settings.diverge_factor)


@register("sgld_diagnostics", dims=("stat",), probe="default_train", units="mixed (see stat)", options=SGLD_OPTIONS,
          opt_in=True, sizes={"stat": STATS}, check=_diagnostics_check, validate=_validate, version=2,
          description="summary of the llc chains: init_loss L(w*), mean sampled loss, min/max/std over chains of "
                      "each chain's llc, max drift (n beta |mean loss, 2nd half - 1st half of the draws|), diverged "
                      "chains, n beta, split R-hat of the sampled losses, mean drift over chains, status (" + "; ".join(f"{k} {v}" for k, v in STATUS.items()) + "); opt-in")
def sgld_diagnostics(model, probe, clean, ctx):
    settings, (init, losses, d) = _full_sgld(model, probe, ctx)
    return chain_diagnostics(init, losses, settings.nbeta(probe.batch_size), d, settings.diverge_factor)


@register("rllc", dims=("layer", "head"), probe="default_train", units="LLC (dimensionless)", options=SGLD_OPTIONS,
          opt_in=True, check=_nan_check, validate=_validate,
          description="refined LLC of one attention head: SGLD over its W_Q, W_K, W_V, W_O slices (and q/k/v "
                      "biases), every other parameter held at w*; data-refined on another probe with --probe; opt-in")
def rllc(model, probe, clean, ctx):
    settings = _settings(ctx.options, probe)
    n = probe.batch_size
    nbeta = settings.nbeta(n)
    rows = []
    for layer in range(len(model.blocks)):
        names, loss_fn = _head_loss_fn(model, probe, clean, layer)
        attn = model.blocks[layer].attn

        def one(head, names=names, loss_fn=loss_fn, attn=attn):
            params = {name: getattr(attn, name)[head] for name in names}
            init, losses = sgld_losses(lambda p, idx: loss_fn(p, head, idx), params, n, settings)
            return llc_from_losses(init, losses, nbeta, n_params(params), settings.diverge_factor)

        rows.append(iv.map_heads(one, attn.n_heads, ctx.head_batching))
    return jax.numpy.stack(rows)
