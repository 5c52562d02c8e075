"""SGLD around a checkpoint and the local learning coefficient (LLC) estimate (Lau et al. 2023).

For a loss L_n over n samples and parameters w* (the checkpoint), every chain starts at w* and
takes `burn_in + draws` steps of

    w <- w - (step_size / 2) * (n beta grad L_b(w) + gamma (w - w*)) + N(0, step_size I),

with L_b the mean loss over a minibatch of `batch_size` samples drawn without replacement at
each step (all n when `batch_size` is None). The minibatch loss at the start of each of the
last `draws` steps is recorded (an unbiased estimate of L_n there), and

    llc = n beta (mean over chains and draws of L - L_n(w*)),  beta = 1 / log n by default.

Randomness: chain c uses `fold_in(key(seed), c)` and step t `fold_in(chain key, t)`, so an
estimate depends only on the settings, the loss and w* (the same noise at every checkpoint: common
random numbers make differences between checkpoints less noisy), and adding chains keeps the
earlier ones. Chains run batched (`vmap`) or one after another (`lax.map`), `chain_batching`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["SGLDSettings", "sgld_losses", "llc_from_losses", "chain_diagnostics", "split_rhat", "STATS", "STATUS",
           "default_chain_batching", "n_params"]

# the summary `sgld_diagnostics` stores, in this order (dim `stat`)
STATS = ("init_loss", "mean_loss", "chain_llc_min", "chain_llc_max", "chain_llc_std", "max_drift",
         "diverged_chains", "nbeta", "rhat", "mean_drift", "status")
# a chain set has settled when split R-hat of the sampled losses is at most RHAT_MAX and the chains
# do not drift together: their mean drift (n beta (mean loss of the 2nd half - of the 1st half of
# the draws), averaged over chains) is within DRIFT_MAX x max(|llc|, 1), or within DRIFT_SE
# standard errors of zero (the spread of the chains' drifts: minibatch noise is not a trend)
RHAT_MAX = 1.1
DRIFT_MAX = 0.1
DRIFT_SE = 3.0
# what the `status` stat means; llc is NaN for 1 and 2
STATUS = {0: "ok", 1: "diverged chains (a loss became non-finite, or n beta (L - L(w*)) exceeded "
                      "diverge_factor x the number of sampled parameters): llc stored as NaN",
          2: "the loss at the checkpoint is not finite: llc stored as NaN",
          3: "negative estimate: the checkpoint is not a local minimum of the probe loss, or the chains "
             "have not equilibrated",
          4: f"not settled: the chains disagree (split R-hat > {RHAT_MAX}) or still drift together (mean drift "
             f"> {DRIFT_MAX:g} x max(|llc|, 1) and > {DRIFT_SE:g} standard errors); raise burn_in and draws"}


def default_chain_batching() -> str:
    """`vmap` (chains batched into larger matmuls; measured faster on CPU too, benchmarks/bench_llc.py)."""
    return "vmap"


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SGLD option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"SGLD option {name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SGLDSettings:
    """Hyperparameters of one LLC estimate; `from_options` validates a type's options."""

    step_size: float
    gamma: float
    beta: float | None
    chains: int
    draws: int
    burn_in: int
    batch_size: int | None
    seed: int
    chain_batching: str
    diverge_factor: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any], n: int) -> "SGLDSettings":
        """Validated settings for a loss over `n` samples; ValueError naming the bad option and the fix."""
        step = _number("step_size", options["step_size"])
        if step <= 0:
            raise ValueError(f"SGLD option step_size must be positive, got {step}; try 1e-4 (smaller if chains diverge)")
        gamma = _number("gamma", options["gamma"])
        if gamma < 0:
            raise ValueError(f"SGLD option gamma (localization) must be >= 0, got {gamma}")
        beta = options["beta"]
        if beta is not None:
            beta = _number("beta", beta)
            if beta <= 0:
                raise ValueError(f"SGLD option beta (inverse temperature) must be positive, got {beta}; "
                                 "leave it unset for 1/log n")
        elif n < 2:
            raise ValueError(f"the default beta = 1/log n needs a probe of at least 2 sequences, got n={n}; "
                             "use a larger probe or set beta")
        chains = _positive_int("chains", options["chains"], 1)
        draws = _positive_int("draws", options["draws"], 1)
        burn_in = _positive_int("burn_in", options["burn_in"], 0)
        batch = options["batch_size"]
        if batch is not None:
            batch = _positive_int("batch_size", batch, 1)
            if batch > n:
                raise ValueError(f"SGLD option batch_size={batch} is larger than the probe ({n} sequences); use a "
                                 f"batch_size <= {n} or a larger probe (e.g. --probe NAME:batch={batch})")
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"SGLD option seed must be an integer, got {seed!r}")
        batching = options["chain_batching"]
        if batching == "auto":
            batching = default_chain_batching()
        if batching not in ("vmap", "map"):
            raise ValueError(f"SGLD option chain_batching must be 'auto', 'vmap' or 'map', got {batching!r}")
        factor = _number("diverge_factor", options["diverge_factor"])
        if factor <= 0:
            raise ValueError(f"SGLD option diverge_factor must be positive, got {factor}")
        return cls(step, gamma, beta, chains, draws, burn_in, batch, seed, batching, factor)

    def nbeta(self, n: int) -> float:
        """n beta, with beta = 1 / log n unless given."""
        return n * (self.beta if self.beta is not None else 1.0 / math.log(n))


def n_params(tree) -> int:
    """Number of scalar parameters in a PyTree of arrays."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def sgld_losses(
    loss_fn: Callable[[Any, Array], Array], params, n: int, settings: SGLDSettings, *, key: Array | None = None
) -> tuple[Float[Array, ""], Float[Array, "chain draw"]]:
    """(L_n(w*), recorded minibatch losses (chains, draws)) for `loss_fn(params, indices)`, the
    mean loss over the samples `indices` (int array) of the n; jittable, pure. `key` overrides
    `key(settings.seed)` (e.g. a traced key, to compare seeds with one compiled program)."""
    s = settings
    nbeta = s.nbeta(n)
    all_idx = jnp.arange(n)
    m = n if s.batch_size is None else s.batch_size
    init_loss = loss_fn(params, all_idx)
    value_and_grad = jax.value_and_grad(loss_fn)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = [math.prod(leaf.shape) for leaf in leaves]
    total, offsets = sum(sizes), list(np.cumsum(sizes)[:-1])
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    base = jax.random.key(s.seed) if key is None else key
    half, noise_scale = s.step_size / 2, math.sqrt(s.step_size)

    def chain(c):
        chain_key = jax.random.fold_in(base, c)

        def step(w, t):
            k_batch, k_noise = jax.random.split(jax.random.fold_in(chain_key, t))
            # a uniform random subset of m samples (top_k of uniform noise: cheaper to compile than a shuffle)
            idx = all_idx if m == n else jax.lax.top_k(jax.random.uniform(k_batch, (n,)), m)[1]
            loss, grad = value_and_grad(w, idx)
            # one normal draw for all parameters (one PRNG kernel in the program: much faster to compile)
            noise = jnp.split(jax.random.normal(k_noise, (total,), dtype), offsets)
            w_leaves, g_leaves = treedef.flatten_up_to(w), treedef.flatten_up_to(grad)
            new = [wl - half * (nbeta * gl + s.gamma * (wl - w0)) + noise_scale * z.reshape(wl.shape).astype(wl.dtype)
                   for wl, gl, w0, z in zip(w_leaves, g_leaves, leaves, noise)]
            return jax.tree_util.tree_unflatten(treedef, new), loss

        _, losses = jax.lax.scan(step, params, jnp.arange(s.burn_in + s.draws))
        return losses[s.burn_in:]

    ids = jnp.arange(s.chains)
    losses = jax.vmap(chain)(ids) if s.chain_batching == "vmap" else jax.lax.map(chain, ids)
    return init_loss, losses


def _diverged(init_loss, losses, nbeta: float, d: int, factor: float) -> Array:
    excess = nbeta * (losses - init_loss)
    return ~jnp.all(jnp.isfinite(losses), axis=1) | jnp.any(excess > factor * max(d, 1), axis=1)


def llc_from_losses(init_loss, losses, nbeta: float, d: int, factor: float) -> Float[Array, ""]:
    """n beta (mean loss - L(w*)); NaN if any chain diverged or L(w*) is not finite."""
    bad = jnp.any(_diverged(init_loss, losses, nbeta, d, factor)) | ~jnp.isfinite(init_loss)
    return jnp.where(bad, jnp.nan, nbeta * (losses.mean() - init_loss))


def split_rhat(losses: Float[Array, "chain draw"]) -> Float[Array, ""]:
    """Split R-hat (Gelman et al., Bayesian Data Analysis 3rd ed., 11.4) of the sampled losses: each
    chain cut in two halves, then sqrt(((h-1)/h W + B/h) / W) over the 2 x chains half-chains of
    length h (W: mean within-half variance, B/h: variance of the half means). 1 for chains that
    agree and have stopped moving; NaN with fewer than 4 draws."""
    h = losses.shape[1] // 2
    if h < 2:
        return jnp.asarray(jnp.nan, jnp.float32)
    halves = jnp.concatenate([losses[:, :h], losses[:, losses.shape[1] - h:]], axis=0)
    within = halves.var(axis=1, ddof=1).mean()
    between = halves.mean(axis=1).var(ddof=1)  # B / h
    pooled = (h - 1) / h * within + between
    return jnp.sqrt(pooled / jnp.maximum(within, jnp.finfo(losses.dtype).tiny))


def chain_diagnostics(init_loss, losses, nbeta: float, d: int, factor: float) -> Float[Array, " stat"]:
    """The `STATS` summary of one estimate's chains (drift: n beta times the change of a chain's
    mean loss from the first to the second half of its draws; max_drift: the largest in size,
    mean_drift: the mean over chains; R-hat: see `split_rhat`). Status, first that applies: 2, 1, 4 (not settled), 3 (negative), 0."""
    diverged = _diverged(init_loss, losses, nbeta, d, factor)
    per_chain = nbeta * (losses.mean(axis=1) - init_loss)
    draws = losses.shape[1]
    h = draws // 2
    nan = jnp.asarray(jnp.nan, jnp.float32)
    if h:
        drift = nbeta * (losses[:, draws - h:].mean(1) - losses[:, :h].mean(1))
        max_drift, mean_drift = jnp.max(jnp.abs(drift)), drift.mean()
        se = drift.std(ddof=1) / math.sqrt(drift.shape[0]) if drift.shape[0] > 1 else jnp.asarray(0.0, drift.dtype)
    else:
        max_drift = mean_drift = se = nan
    llc = nbeta * (losses.mean() - init_loss)
    rhat = split_rhat(losses)
    trend = (jnp.abs(mean_drift) > DRIFT_MAX * jnp.maximum(jnp.abs(llc), 1.0)) & (jnp.abs(mean_drift) > DRIFT_SE * se)
    unsettled = (rhat > RHAT_MAX) | trend
    status = jnp.where(~jnp.isfinite(init_loss), 2, jnp.where(jnp.any(diverged), 1,
                       jnp.where(unsettled, 4, jnp.where(llc < 0, 3, 0))))
    stats = {
        "init_loss": init_loss, "mean_loss": losses.mean(), "chain_llc_min": jnp.nanmin(per_chain),
        "chain_llc_max": jnp.nanmax(per_chain), "chain_llc_std": jnp.nanstd(per_chain), "max_drift": max_drift,
        "diverged_chains": diverged.sum(), "nbeta": jnp.asarray(nbeta), "rhat": rhat, "mean_drift": mean_drift,
        "status": status,
    }
    return jnp.stack([jnp.asarray(stats[k], jnp.float32) for k in STATS])
