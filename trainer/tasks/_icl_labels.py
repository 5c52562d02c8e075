"""Label bookkeeping for the ICL task: the fixed class->label map and icl-dynamics label pairs."""

from __future__ import annotations

import itertools

import jax
import numpy as np
from jaxtyping import Int

# The relabeling split of the icl-dynamics fixture runs (fixtures README section 3): the 10
# unordered pairs of labels 0..4 permuted with PRNGKey(20) and split 8/2/0.
ICL_DYNAMICS_TRAIN_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 4), (1, 2), (0, 1), (2, 4), (0, 2), (1, 3), (0, 3), (1, 4),
)
ICL_DYNAMICS_VAL_PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (3, 4))


def class_label_map(n_classes: int, n_labels: int, seed: int | None) -> Int[np.ndarray, "cls"]:
    """The fixed (in-weights) label of every class, int32 (n_classes,).

    `seed=None`: `label = class_id % n_labels`. Otherwise a balanced random map:
    `numpy.random.default_rng(seed).permutation(n_classes) % n_labels`.
    """
    if seed is None:
        out = np.arange(n_classes) % n_labels
    else:
        out = np.random.default_rng(seed).permutation(n_classes) % n_labels
    return out.astype(np.int32)


def relabel_pair_split(
    n_labels: int = 5, split: tuple[float, float, float] = (8, 2, 0), seed: int = 20
) -> dict[str, tuple[tuple[int, int], ...]]:
    """Split the unordered label pairs {a < b} into train/val/test as icl-dynamics does.

    Pairs in lexicographic order are permuted with `jax.random.permutation(PRNGKey(seed))`;
    counts are `floor(n_pairs * split / sum(split))`; test takes the first block of the
    permutation, val the next, train the rest. Defaults reproduce the fixture runs' pairs.
    """
    if n_labels < 2:
        raise ValueError(f"label pairs need at least 2 labels, got n_labels={n_labels}.")
    if len(split) != 3 or min(split) < 0 or sum(split) <= 0:
        raise ValueError(
            f"split must be three non-negative numbers (train, val, test) with a positive sum, got {split}."
        )
    pairs = np.array(list(itertools.combinations(range(n_labels), 2)), dtype=np.int32)
    frac = np.asarray(split, dtype=np.float64)
    counts = (len(pairs) * frac / frac.sum()).astype(int)
    n_test, n_val = int(counts[2]), int(counts[1])
    perm = np.asarray(jax.random.permutation(jax.random.PRNGKey(seed), len(pairs)))
    ordered = [tuple(int(v) for v in pairs[i]) for i in perm]
    return {
        "test": tuple(ordered[:n_test]),
        "val": tuple(ordered[n_test : n_test + n_val]),
        "train": tuple(ordered[n_test + n_val :]),
    }
