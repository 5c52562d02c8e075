"""Bayes baselines for in-context linear regression (Raventós et al. 2023), in float64 numpy.

Both predict y_k from the k pairs before it (position k = 0 has an empty context):
- `ridge_predictions`: the posterior mean of w under the Gaussian prior N(0, prior_var I_D) and
  noise variance sigma^2, i.e. ridge regression with penalty sigma^2 / prior_var; Bayes-optimal
  when tasks are Gaussian (infinite task diversity).
- `dmmse_predictions`: the posterior mean over a finite pool of M tasks with a uniform prior
  (the discrete minimum-mean-squared-error estimator); Bayes-optimal for the training
  distribution of a finite-M run.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 22  # batch x positions x tasks entries per dMMSE chunk


def _check(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"xs must be (batch, K, D) and ys (batch, K), got {xs.shape} and {ys.shape}")
    return xs, ys


def ridge_predictions(xs, ys, noise_var: float, prior_var: float = 1.0) -> np.ndarray:
    """(B, K) posterior-mean predictions of y_k from pairs 0..k-1 (noise_var 0: min-norm least squares)."""
    xs, ys = _check(xs, ys)
    B, K, D = xs.shape
    out = np.zeros((B, K))
    for k in range(1, K):
        X, y = xs[:, :k], ys[:, :k]
        if noise_var > 0:
            A = np.einsum("bkd,bke->bde", X, X) + (noise_var / prior_var) * np.eye(D)
            w = np.linalg.solve(A, np.einsum("bkd,bk->bd", X, y)[..., None])[..., 0]
        else:
            w = np.einsum("bdk,bk->bd", np.linalg.pinv(X), y)
        out[:, k] = np.einsum("bd,bd->b", w, xs[:, k])
    return out


def dmmse_predictions(xs, ys, pool, noise_var: float) -> np.ndarray:
    """(B, K) posterior-mean predictions over the task `pool` (M, D) given pairs 0..k-1."""
    xs, ys = _check(xs, ys)
    pool = np.asarray(pool, np.float64)
    if pool.ndim != 2 or pool.shape[1] != xs.shape[2]:
        raise ValueError(f"the task pool must be (M, {xs.shape[2]}), got {pool.shape}")
    B, K, _ = xs.shape
    var = max(float(noise_var), 1e-12)
    step = max(1, _CHUNK // max(1, K * pool.shape[0]))
    out = np.empty((B, K))
    for lo in range(0, B, step):
        x, y = xs[lo:lo + step], ys[lo:lo + step]
        preds = np.einsum("bkd,md->bkm", x, pool)  # every task's prediction at every position
        sq = (y[..., None] - preds) ** 2
        sse = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)[:, :-1]], axis=1)  # pairs before k
        logits = -sse / (2 * var)
        logits -= logits.max(axis=-1, keepdims=True)
        post = np.exp(logits)
        post /= post.sum(axis=-1, keepdims=True)
        out[lo:lo + step] = (post * preds).sum(axis=-1)
    return out


def bayes_predictions(xs, ys, pool, noise_var: float) -> dict[str, np.ndarray]:
    """`ridge` and `dmmse` (B, K) float32; with no pool (infinite diversity) dMMSE is the Bayes
    predictor of the Gaussian task prior, i.e. ridge."""
    ridge = ridge_predictions(xs, ys, noise_var)
    dmmse = ridge if pool is None else dmmse_predictions(xs, ys, pool, noise_var)
    return {"ridge": ridge.astype(np.float32), "dmmse": dmmse.astype(np.float32)}
