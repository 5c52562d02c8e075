"""Fixed ICL and IWL evaluation sets, deterministic given `eval_seed`."""

from __future__ import annotations

import zlib

import jax
import numpy as np
from jaxtyping import Array, Float

from ._icl import ICLTaskConfig, make_spec, splits
from ._icl_formats import get_sequence_format
from ._icl_sampler import sample_spec


def _eval_key(eval_seed: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(eval_seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def make_eval_sets(
    cfg: ICLTaskConfig, data: Float[Array, "cls ex dim"], eval_seed: int, n: int
) -> dict[str, dict[str, Array]]:
    """Evaluation batches of `n` sequences each, same format as training (`examples`, `labels`).

    All use classes uniformly (no Zipf), the train exemplar block and the task's `noise_scale`;
    each set's key is `fold_in(PRNGKey(eval_seed), crc32(name))`, so a set does not depend on
    which others exist. A mixture config uses its first component.
    - `icl`: classes from the test block (the train block if there is none), every sequence
      bursty (query class `burstiness` times in context, plus the distractor as in training),
      labels relabeled per sequence as the sequence format says (icl_dynamics: a random training
      label pair; bursty: a random permutation of the fixed map): only in-context learning can solve it.
    - `icl_train`: the same on the train classes (icl-dynamics `fsl_train`).
    - `iwl`: train classes; the query class never appears in the context (context classes
      i.i.d. uniform from the other train classes); every label, query included, is the fixed
      class->label map: only in-weights learning can solve it.
    - the icl_dynamics format adds the fixture evaluators: `fsl_train` (= `icl_train`),
      `fsl_test_class` (= `icl`), `fsl_val_rl` (train classes, `val_label_pairs`; if any) and
      `fsl_train_valex` (train classes, exemplars from the val block drawn per item; if any).
    """
    if hasattr(cfg, "components"):
        cfg = cfg.components[0]
    if not isinstance(cfg, ICLTaskConfig):
        raise ValueError(f"eval sets exist for ICL task configs only, got {type(cfg).__name__}.")
    if n < 1:
        raise ValueError(f"n must be a positive number of sequences, got {n}.")
    shape = np.shape(data)
    blocks = splits(cfg, shape)
    fmt = get_sequence_format(cfg.sequence_format)
    test_lo, test_n = blocks["class_test"] if blocks["class_test"][1] > 0 else blocks["class_train"]
    bursty = dict(zipf_alpha=0.0, p_bursty=1.0, relabel=fmt.eval_relabel)
    specs = {
        "icl": make_spec(cfg, shape, class_lo=test_lo, class_n=test_n, **bursty),
        "icl_train": make_spec(cfg, shape, **bursty),
        "iwl": make_spec(cfg, shape, zipf_alpha=0.0, p_bursty=0.0, exclude_query=True, relabel="none"),
    }
    for name, fields in fmt.extra_evals(cfg, blocks).items():
        specs[name] = make_spec(cfg, shape, **{**bursty, **fields})
    out = {name: sample_spec(spec, _eval_key(eval_seed, name), n, data) for name, spec in specs.items()}
    out.update({alias: out[name] for alias, name in fmt.eval_aliases.items()})
    return out
