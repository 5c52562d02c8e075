"""Dim names of derived-scalar types (the project vocabulary of `store.dims`) and their sizes.

A type's dims come after `step` (added by the store). Sizes follow from the model config
(`layer`, `src_layer`, `dst_layer`: n_layers; `head`, `src_head`, `dst_head`: n_heads; `neuron`: the
MLP width, and no size for an attention-only model) or from
the probe (`pos`: its sequence length; for a regression probe its K prediction positions;
`query_pos`, `key_pos`: every position the model sees, the sides of an attention pattern); any
other dim (`side`, `chain`) needs an explicit size from the type (`register(..., sizes={"side": 2})`).
Coordinates are `arange(size)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

import numpy as np

from store.dims import (
    CHAIN,
    DST_HEAD,
    DST_LAYER,
    HEAD,
    KNOWN_DIMS,
    LAYER,
    KEY_POS,
    NEURON,
    POS,
    QUERY_POS,
    RUN,
    SIDE,
    SRC_HEAD,
    SRC_LAYER,
    STAT,
    STEP,
)

if TYPE_CHECKING:
    from trainer.model import ModelConfig

    from .probes._probe import Probe

__all__ = [
    "STEP", "LAYER", "HEAD", "SRC_LAYER", "SRC_HEAD", "DST_LAYER", "DST_HEAD", "POS", "QUERY_POS", "KEY_POS", "NEURON", "SIDE", "CHAIN",
    "STAT", "RUN", "KNOWN_DIMS", "TYPE_DIMS", "dim_size",
]

# dims a type may declare: everything but the ones the store adds itself
TYPE_DIMS: tuple[str, ...] = tuple(d for d in KNOWN_DIMS if d not in (STEP, RUN))

_FROM_CONFIG: dict[str, Callable[["ModelConfig"], int]] = {
    LAYER: lambda c: c.n_layers,
    SRC_LAYER: lambda c: c.n_layers,
    DST_LAYER: lambda c: c.n_layers,
    HEAD: lambda c: c.n_heads,
    SRC_HEAD: lambda c: c.n_heads,
    DST_HEAD: lambda c: c.n_heads,
}


def dim_size(
    dim: str,
    config: "ModelConfig",
    probe: "Probe | None" = None,
    sizes: Mapping[str, int | Callable[["ModelConfig"], int]] | None = None,
) -> int:
    """Length of `dim` for a model `config` (and `probe`, for the position dims); `sizes` overrides/extends."""
    if sizes and dim in sizes:
        size = sizes[dim]
        if isinstance(size, (tuple, list)):  # string coordinates, e.g. sizes={"side": ("q", "k", "v")}
            return len(size)
        return int(size(config) if callable(size) else size)
    if dim in _FROM_CONFIG:
        return _FROM_CONFIG[dim](config)
    if dim == NEURON:
        if config.attn_only:
            raise ValueError("dim 'neuron' counts MLP neurons, and this model is attention-only (no MLP); "
                             "drop the neuron types from the request")
        return config.mlp_width
    if dim == POS:
        if probe is None:
            raise ValueError("the size of dim 'pos' is the probe's sequence length; pass the probe")
        return probe.n_pos
    if dim in (QUERY_POS, KEY_POS):
        if probe is None:
            raise ValueError(f"the size of dim {dim!r} is the probe's sequence length; pass the probe")
        return probe.seq_len
    raise ValueError(f"dim {dim!r} has no known size; give it with register(..., sizes={{{dim!r}: N}})")


def dim_coords(dim: str, config: "ModelConfig", probe: "Probe | None" = None, sizes=None) -> np.ndarray:
    """Integer coordinates `0..size-1` of `dim`, or the labels a type gave (`sizes={"side": ("q", "k")}`)."""
    if sizes and isinstance(sizes.get(dim), (tuple, list)):
        return np.array([str(v) for v in sizes[dim]], dtype=object)
    return np.arange(dim_size(dim, config, probe, sizes), dtype=np.int64)
