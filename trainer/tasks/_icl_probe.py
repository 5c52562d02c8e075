"""The icl-dynamics analysis probe: every ordered pair of training classes x every training relabeling.

Built exactly as the fixtures README section 8 describes (numpy; not a sampler, no randomness).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from ._icl import ICLTaskConfig, splits


def icl_dynamics_probe_set(
    train_exemplar0: Float[np.ndarray, "cls dim"], label_pairs
) -> dict[str, np.ndarray]:
    """Sequences `c0 l0 c1 l1 Q` over label pairs x ordered class pairs x query side.

    Order: label pair outer (`label_pairs` in order, then each pair reversed (b, a) in the same
    order), then c0, then c1 != c0: `n_pairs * 2 * C * (C - 1)` contexts. The first half of the
    output has query c0 (target l0, `correct_index` 0), the second half the same contexts with
    query c1 (target l1, `correct_index` 1). With 50 classes and 8 pairs: 78,400 sequences.
    Returns `examples` float32 (N, 3, dim), `labels` int32 (N, 3) (last = target),
    `correct_index` int32 (N,) and `classes` int32 (N, 3) (row indices into `train_exemplar0`).
    """
    x = np.asarray(train_exemplar0, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"train_exemplar0 must have shape (n_train_classes, dim), got shape {x.shape}.")
    pairs = [tuple(int(v) for v in p) for p in label_pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"label_pairs must be a non-empty list of (a, b) pairs, got {label_pairs!r}.")
    all_pairs = np.array(pairs + [(b, a) for a, b in pairs], dtype=np.int32)  # (L, 2)
    n_cls = x.shape[0]
    c0, c1 = np.meshgrid(np.arange(n_cls), np.arange(n_cls), indexing="ij")
    keep = c0 != c1
    c0, c1 = c0[keep], c1[keep]  # c0 outer, c1 inner
    n_lab, n_cp = len(all_pairs), len(c0)
    ctx_c0 = np.tile(c0, n_lab)
    ctx_c1 = np.tile(c1, n_lab)
    l0 = np.repeat(all_pairs[:, 0], n_cp)
    l1 = np.repeat(all_pairs[:, 1], n_cp)
    query = np.concatenate([ctx_c0, ctx_c1])
    target = np.concatenate([l0, l1])
    classes = np.stack([np.tile(ctx_c0, 2), np.tile(ctx_c1, 2), query], axis=1).astype(np.int32)
    labels = np.stack([np.tile(l0, 2), np.tile(l1, 2), target], axis=1).astype(np.int32)
    correct = np.repeat(np.array([0, 1], dtype=np.int32), n_lab * n_cp)
    return {"examples": x[classes], "labels": labels, "correct_index": correct, "classes": classes}


def icl_dynamics_probe_for(cfg: ICLTaskConfig, data: Float[np.ndarray, "cls ex dim"]) -> dict[str, np.ndarray]:
    """The section 8 probe of a run: exemplar 0 of its train classes and its `label_pairs`."""
    if not cfg.label_pairs:
        raise ValueError("the icl-dynamics probe needs the task's label_pairs; this task config has none.")
    lo, n = splits(cfg, np.shape(data))["class_train"]
    return icl_dynamics_probe_set(np.asarray(data)[lo : lo + n, 0], cfg.label_pairs)
