"""A training step's memory, estimated from shapes before anything is allocated or written.

The estimate is the bytes of every activation one forward keeps for the backward pass (the
`call_with_all_aux` PyTree of the batch, from `jax.eval_shape`: nothing is computed), twice over
for the gradients, plus the batch itself. A step that cannot fit in the machine's memory is refused
with the sizes and the largest batch that would fit, instead of failing inside XLA later.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def available_bytes() -> int | None:
    """Memory the process can still use (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def device_available_bytes() -> int | None:
    """Free memory of the device JAX computes on: the host's on CPU, the accelerator's own
    (limit minus in use, from its memory stats) elsewhere; None where it cannot be read."""
    if jax.default_backend() == "cpu":
        return available_bytes()
    try:
        stats = jax.devices()[0].memory_stats() or {}
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except (KeyError, TypeError, RuntimeError):
        return None


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def step_bytes(task, model, batch_size: int) -> int:
    """Estimated bytes of one training step on `batch_size` sequences (shapes only)."""
    batch = jax.eval_shape(lambda: task.sample(jax.random.key(0), batch_size))
    aux = jax.eval_shape(lambda b: jax.vmap(lambda ex: model.call_with_all_aux(task.model_input(ex)))(b), batch)
    return 2 * _nbytes(aux) + _nbytes(batch)


def forward_bytes(model, inputs) -> int:
    """Bytes of every activation one forward of `model` over the batch `inputs` keeps (the vmapped
    `call_with_all_aux` PyTree, from shapes only); `model` may hold ShapeDtypeStructs."""
    import equinox as eqx

    aux = eqx.filter_eval_shape(lambda m, x: jax.vmap(m.call_with_all_aux)(x), model, inputs)
    return _nbytes(aux) + _nbytes(inputs)


def check_fits(task, model, batch_size: int, eval_size: int) -> None:
    """MemoryError (one sentence) if a training or evaluation step cannot fit in the available memory."""
    free = device_available_bytes()
    if free is None:
        return
    for what, n in (("train.batch_size", batch_size), ("train.eval_size", eval_size)):
        need = step_bytes(task, model, n)
        if need > free:
            fits = max(1, int(n * free / need))
            raise MemoryError(f"{what}={n} needs about {need / 2**30:.1f} GiB for one step, more than the "
                              f"{free / 2**30:.1f} GiB available; use {what}={fits} or less")
