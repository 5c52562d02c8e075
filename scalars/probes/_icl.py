"""Classifier-run probe helpers: the paper's probe from vectors stored with a run, and strided subsamples.

An imported icl-dynamics run keeps exemplar 0 of its training classes in
`RUN_DIR/probes/icl_dynamics_exemplar0.npy` (named in run.json `probe_data`), which is all the
paper's probe set needs (fixtures README section 8), so the probe rebuilds without the data file.
`name:stride=K` keeps every K-th sequence of a probe (`icl_dynamics:stride=16`: 4,900 of the
78,400 sequences; the label-pair x class-pair x query-side blocks stay evenly covered).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._probe import Probe, from_classifier_arrays

__all__ = ["stored_icl_dynamics_probe", "split_stride", "take_every"]

EXEMPLAR0_KEY = "icl_dynamics_exemplar0"


def stored_icl_dynamics_probe(run_dir: str | Path, info: dict) -> Probe | None:
    """The paper's probe built from the exemplar-0 vectors stored in the run (None if it stores none)."""
    from trainer.tasks import icl_dynamics_probe_set

    record = info.get("probe_data", {}).get(EXEMPLAR0_KEY)
    if not record:
        return None
    path = Path(run_dir) / record["path"]
    if not path.is_file():
        raise ValueError(f"run '{run_dir}' lists {record['path']} in run.json but the file is missing; "
                         "import the run again (scalars import --from icl-dynamics ...)")
    x = np.load(path, allow_pickle=False)
    pairs = info.get("config", {}).get("task", {}).get("label_pairs") or []
    if not pairs:
        raise ValueError(f"run '{run_dir}' stores exemplar vectors but its task config has no label_pairs; "
                         "import the run again")
    arrays = icl_dynamics_probe_set(x, pairs)
    return from_classifier_arrays(name="icl_dynamics", metadata={"kind": "icl_dynamics"}, **arrays)


def split_stride(name: str) -> tuple[str, int | None]:
    """`"icl_dynamics:stride=16"` -> `("icl_dynamics", 16)`; other options stay in the name."""
    base, sep, rest = name.partition(":")
    if not sep or name.endswith((".npy", ".npz")):
        return name, None
    stride, keep = None, []
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key.strip() != "stride":
            keep.append(item)
            continue
        try:
            stride = int(value)
        except ValueError:
            raise ValueError(f"probe option stride={value!r} in {name!r} must be a positive integer") from None
        if stride < 1:
            raise ValueError(f"probe option stride={stride} in {name!r} must be a positive integer")
    return (base + (":" + ",".join(keep) if keep else "")), stride


def take_every(probe: Probe, stride: int) -> Probe:
    """Sequences 0, K, 2K, ... of `probe` (every array with the batch on axis 0); metadata records K."""
    if stride == 1:
        return probe
    if stride > probe.batch_size:
        raise ValueError(f"probe option stride={stride} is larger than probe '{probe.name}' "
                         f"({probe.batch_size} sequences); use a smaller stride")
    arrays = {k: np.asarray(v)[::stride] for k, v in probe.arrays.items()}
    return Probe(f"{probe.name}:stride={stride}", arrays, {**dict(probe.metadata), "stride": int(stride)})
