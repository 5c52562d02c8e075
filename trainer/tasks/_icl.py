"""Bursty in-context classification (Chan et al. 2022; icl-dynamics): config and training sampler.

A batch is `examples` float32 (B, P, dim) and `labels` int32 (B, P), P = context_len + 1; the
last item is the query and `labels[:, -1]` is the target (never fed to the model).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._icl_data import ICLDataConfig
from ._icl_formats import get_sequence_format
from ._icl_labels import ICL_DYNAMICS_TRAIN_PAIRS, ICL_DYNAMICS_VAL_PAIRS
from ._icl_sampler import SeqSpec, min_pool_size, sample_spec


def _pairs(value) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in p) for p in value)


@dataclasses.dataclass(frozen=True)
class ICLTaskConfig:
    """Exemplar-label sequences; hashable so it can be a static argument of `jax.jit`.

    Classes: `class_split = (train, val, test)` counts; train is classes `[0, train)`, val the
    next `val`, test the last `test` classes of the data (their sum may be below the class
    count; the middle is then unused). `exemplar_split` does the same for exemplar indices
    (None: all exemplars are train). Training draws train classes with Zipf weights
    `(rank + 1) ** -zipf_alpha` (rank = class index; 0 is uniform) and train exemplars.
    With probability `p_bursty` the query class appears `burstiness` times in the context
    (with a distractor class also `burstiness` times if `bursty_distractor`, the rest other
    classes); otherwise context classes are i.i.d. from the Zipf weights. Labels: the fixed
    class->label map `class_label_map(n_classes, n_labels, label_map_seed)` (seed None: class
    id mod n_labels); with `fewshot_relabel`, composed with a random permutation of the
    `n_labels` labels drawn per sequence, so a class's label is consistent within a sequence
    and uniform across sequences. `noise_scale` adds N(0, noise_scale^2) to every exemplar
    vector at sampling time. `sequence_format` names the layout of training sequences
    (`SEQUENCE_FORMATS`): `"bursty"` as above, `"icl_dynamics"` the icl-dynamics training sampler
    (fixtures README section 7): every sequence holds the query class Q and a distractor D
    `burstiness` times each (context_len must be 2 * burstiness), a pair drawn uniformly from
    `label_pairs` in random order gives a to Q's items and b to D's; `p_bursty`,
    `bursty_distractor` and `fewshot_relabel` are not used then. `val_label_pairs` feed that
    format's `fsl_val_rl` eval. `data` says where the exemplar array comes from (`load_exemplars`).
    """

    context_len: int = 8
    n_labels: int = 16
    label_map_seed: int | None = 0
    p_bursty: float = 0.9
    burstiness: int = 3
    bursty_distractor: bool = True
    zipf_alpha: float = 0.0
    class_split: tuple[int, int, int] = (192, 0, 64)
    exemplar_split: tuple[int, int, int] | None = None
    noise_scale: float = 0.0
    fewshot_relabel: bool = False
    sequence_format: str = "bursty"
    label_pairs: tuple[tuple[int, int], ...] = ()
    val_label_pairs: tuple[tuple[int, int], ...] = ()
    data: ICLDataConfig = ICLDataConfig()

    def sample(self, key, batch_size: int, data=None, *, with_info: bool = False) -> dict:
        """One training batch (`trainer.tasks.sample_batch`); pure and jittable with the config static."""
        return sample_icl_batch(self, key, batch_size, data, with_info=with_info)

    def __post_init__(self):
        # Accept JSON-style lists and dicts; store hashable tuples and dataclasses.
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if isinstance(self.data, dict):
            fix("data", ICLDataConfig(**self.data))
        fix("class_split", tuple(int(v) for v in self.class_split))
        if self.exemplar_split is not None:
            fix("exemplar_split", tuple(int(v) for v in self.exemplar_split))
        fix("label_pairs", _pairs(self.label_pairs))
        fix("val_label_pairs", _pairs(self.val_label_pairs))
        self._validate()

    def _validate(self) -> None:
        if self.context_len < 1:
            raise ValueError(f"context_len must be at least 1, got {self.context_len}.")
        if self.n_labels < 2:
            raise ValueError(f"n_labels must be at least 2, got {self.n_labels}.")
        if not 0.0 <= self.p_bursty <= 1.0:
            raise ValueError(f"p_bursty must be a probability in [0, 1], got {self.p_bursty}.")
        fmt = get_sequence_format(self.sequence_format)
        copies = fmt.context_slots(self)
        if self.burstiness < 1 or copies > self.context_len:
            raise ValueError(
                f"burstiness {self.burstiness} needs {copies} context slots (query class"
                f"{' and distractor' if copies > self.burstiness else ''}) but context_len is "
                f"{self.context_len}; lower burstiness or raise context_len."
            )
        if self.zipf_alpha < 0:
            raise ValueError(f"zipf_alpha must be >= 0 (0 is uniform), got {self.zipf_alpha}.")
        for name in ("class_split", "exemplar_split"):
            split = getattr(self, name)
            if split is not None and (len(split) != 3 or min(split) < 0 or split[0] < 1):
                raise ValueError(
                    f"{name} must be three non-negative counts (train, val, test) with train >= 1, got {split}."
                )
        if self.noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}.")
        for name in ("label_pairs", "val_label_pairs"):
            for a, b in getattr(self, name):
                if a == b or not (0 <= a < self.n_labels and 0 <= b < self.n_labels):
                    raise ValueError(
                        f"{name} entry ({a}, {b}) must be two different labels in 0..{self.n_labels - 1}; fix the pair."
                    )
        fmt.check(self)


def splits(cfg: ICLTaskConfig, data_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """`(lo, n)` blocks for classes and exemplars: keys `class_train/val/test`, `ex_train/val/test`."""
    if len(data_shape) != 3:
        raise ValueError(f"exemplar data must have shape (classes, exemplars, dim), got shape {tuple(data_shape)}.")
    n_cls, n_ex = data_shape[0], data_shape[1]
    tr, va, te = cfg.class_split
    if tr + va + te > n_cls:
        raise ValueError(
            f"class_split {cfg.class_split} needs {tr + va + te} classes but the data has {n_cls}; "
            "shrink class_split or use more classes."
        )
    etr, eva, ete = cfg.exemplar_split if cfg.exemplar_split is not None else (n_ex, 0, 0)
    if etr + eva + ete > n_ex:
        raise ValueError(
            f"exemplar_split {cfg.exemplar_split} needs {etr + eva + ete} exemplars per class but the "
            f"data has {n_ex}; shrink exemplar_split."
        )
    return {
        "class_train": (0, tr), "class_val": (tr, va), "class_test": (n_cls - te, te),
        "ex_train": (0, etr), "ex_val": (etr, eva), "ex_test": (n_ex - ete, ete),
    }


def make_spec(cfg: ICLTaskConfig, data_shape: tuple[int, ...], **overrides) -> SeqSpec:
    """The training `SeqSpec` of `cfg` for data of `data_shape`, with field `overrides` applied."""
    blocks = splits(cfg, data_shape)
    base = dict(
        context_len=cfg.context_len, n_labels=cfg.n_labels,
        class_lo=blocks["class_train"][0], class_n=blocks["class_train"][1],
        ex_lo=blocks["ex_train"][0], ex_n=blocks["ex_train"][1],
        zipf_alpha=cfg.zipf_alpha, burstiness=cfg.burstiness, label_pairs=cfg.label_pairs,
        noise_scale=cfg.noise_scale, label_map_seed=cfg.label_map_seed,
        **get_sequence_format(cfg.sequence_format).training(cfg),  # p_bursty, distractor, relabel
    )
    spec = SeqSpec(**{**base, **overrides})
    need = min_pool_size(spec)
    if spec.class_n < need or spec.ex_n < 1:
        raise ValueError(
            f"this sampler needs at least {need} classes and 1 exemplar in its block, got {spec.class_n} "
            f"classes and {spec.ex_n} exemplars; enlarge class_split / exemplar_split."
        )
    return spec


def sample_icl_batch(
    cfg: ICLTaskConfig,
    key: PRNGKeyArray,
    batch_size: int,
    data: Float[Array, "cls ex dim"] | None,
    *,
    with_info: bool = False,
) -> dict[str, Array]:
    """Training batch: `examples` (B, P, dim) float32, `labels` (B, P) int32, P = context_len + 1.

    With `with_info`, also `classes` (B, P) int32 and `bursty` (B,) bool.
    """
    if data is None:
        raise ValueError("the ICL task needs its exemplar array; pass data=load_exemplars(cfg.data).")
    return sample_spec(make_spec(cfg, np.shape(data)), key, batch_size, data, with_info=with_info)


def icl_dynamics_config(**overrides) -> ICLTaskConfig:
    """The icl-dynamics fixture task (README section 3): 2 context pairs, 5 labels, 8/2 pairs, 1623 classes.

    Data defaults to synthetic clusters identical to the fixture's h5 file (seed 0, 1623 x 5 x 512, 0.1).
    """
    kw = dict(
        context_len=2, n_labels=5, burstiness=1, p_bursty=1.0, class_split=(50, 1473, 100),
        exemplar_split=(1, 4, 0), sequence_format="icl_dynamics", label_pairs=ICL_DYNAMICS_TRAIN_PAIRS,
        val_label_pairs=ICL_DYNAMICS_VAL_PAIRS,
        data=ICLDataConfig(source="synthetic", seed=0, n_classes=1623, n_exemplars=5, dim=512, noise=0.1),
    )
    kw.update(overrides)
    return ICLTaskConfig(**kw)

