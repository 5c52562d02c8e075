"""The one vocabulary of dimension names, shared by xarray dims, type shapes and the registry.

- ``step``: training step of a checkpoint (int64 coordinate; the leading dim of every scalar).
- ``layer``: transformer block index, 0-based (the destination block for pairwise scores).
- ``head``: attention head index within a layer, 0-based.
- ``src_layer`` / ``src_head``: block / head whose output is the *source* in a pairwise score
  (composition, reconstituted attention); ``layer``/``head`` are then the receiving head.
- ``dst_layer`` / ``dst_head``: explicit receiving block / head where a type needs both named.
- ``pos``: token position in a probe sequence, 0-based (BOS at 0).
- ``query_pos`` / ``key_pos``: the attending (row) and attended-to (column) position of an
  attention pattern, 0-based over every position the model sees (BOS at 0).
- ``side``: which input of an attention head a quantity is about (e.g. query or key side).
- ``chain``: index of an independent sampling chain (e.g. repeated estimates of one scalar).
- ``neuron``: MLP neuron index within a layer (its hidden unit), 0-based.
- ``stat``: which summary statistic of a computation (string coords, e.g. SGLD diagnostics).
- ``run``: one run directory when several runs are opened together.
"""

from __future__ import annotations

__all__ = [
    "STEP", "LAYER", "HEAD", "SRC_LAYER", "SRC_HEAD", "DST_LAYER", "DST_HEAD",
    "POS", "QUERY_POS", "KEY_POS", "NEURON", "SIDE", "CHAIN", "STAT", "RUN", "KNOWN_DIMS",
]

STEP = "step"
LAYER = "layer"
HEAD = "head"
SRC_LAYER = "src_layer"
SRC_HEAD = "src_head"
DST_LAYER = "dst_layer"
DST_HEAD = "dst_head"
POS = "pos"
QUERY_POS = "query_pos"
KEY_POS = "key_pos"
NEURON = "neuron"
SIDE = "side"
CHAIN = "chain"
STAT = "stat"
RUN = "run"

KNOWN_DIMS: tuple[str, ...] = (
    STEP, LAYER, HEAD, SRC_LAYER, SRC_HEAD, DST_LAYER, DST_HEAD, POS, QUERY_POS, KEY_POS, NEURON, SIDE, CHAIN, STAT,
    RUN,
)
