"""The run's training task and probe in this project's vocabulary (label pairs, data, the paper's probe set)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ...presets import PRESETS
from ...tasks import ICL_DYNAMICS_TRAIN_PAIRS, ICL_DYNAMICS_VAL_PAIRS, ICLTaskConfig, icl_dynamics_probe_set
from ...tasks import relabel_pair_split
from ._config import _README_SPLIT, _cfg


def icl_dynamics_label_pairs(config_json: dict) -> dict[str, tuple[tuple[int, int], ...]]:
    """Train / val / test relabeling pairs of the run (README section 3).

    The README's pairs for 5 labels, split 8/2/0, seed 20; otherwise recomputed with
    `relabel_pair_split`, which equals the original only under the same JAX PRNG.
    """
    n = int(_cfg(config_json, "fs_relabel"))
    split = tuple(float(v) for v in _cfg(config_json, "fs_relabel_split"))
    seed = int(_cfg(config_json, "fs_relabel_split_seed"))
    if (n, split, seed) == _README_SPLIT:
        return {"train": ICL_DYNAMICS_TRAIN_PAIRS, "val": ICL_DYNAMICS_VAL_PAIRS, "test": ()}
    return relabel_pair_split(n, split, seed)


def _data_section(config_json: dict, data: Path | None, run_folder: Path | None) -> dict:
    base = copy.deepcopy(PRESETS["icl-dynamics"]["task"]["data"])
    original = str(_cfg(config_json, "data_file"))
    path = data
    if path is None:
        found = _find_data_file(config_json, run_folder)
        path = found if found is not None else Path(original)
    base.update(source="h5", path=str(Path(path).resolve()) if Path(path).exists() else str(path),
                h5_key=str(config_json.get("data_path_in_file") or base["h5_key"]))
    return base


def icl_dynamics_task(config_json: dict, *, data: Path | None = None, run_folder: Path | None = None,
                      data_section: dict | None = None) -> dict:
    """This project's `task` section (kind "icl", sequence_format "icl_dynamics") for the run's training task.

    Its `data` is `data_section` if given, else the HDF5 file `data` or the config's `data_file`."""
    mixing = list(config_json.get("mixing_coeffs") or [1.0])
    if len(mixing) != 1:
        raise ValueError(f"icl-dynamics run mixes {len(mixing)} training samplers (mixing_coeffs {mixing}); only "
                         "runs with a single sampler can be imported")
    pairs = icl_dynamics_label_pairs(config_json)
    task = copy.deepcopy(PRESETS["icl-dynamics"]["task"])
    task.update(
        context_len=int(_cfg(config_json, "train_context_len")),
        n_labels=int(_cfg(config_json, "model_output_classes")),
        burstiness=int(list(config_json.get("pt_burstiness") or [1])[0]),
        p_bursty=1.0,
        zipf_alpha=float(config_json.get("zipf_alpha") or 0.0),
        class_split=[int(v) for v in _cfg(config_json, "class_split")],
        exemplar_split=[int(v) for v in _cfg(config_json, "exemplar_split")],
        noise_scale=float(config_json.get("noise_scale_train") or 0.0),
        sequence_format="icl_dynamics",
        label_pairs=[list(p) for p in pairs["train"]],
        val_label_pairs=[list(p) for p in pairs["val"]],
        data=data_section if data_section is not None else _data_section(config_json, data, run_folder),
    )
    try:
        ICLTaskConfig(**{k: v for k, v in task.items() if k != "kind"})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the icl-dynamics task of this run cannot be expressed as this project's task: {exc}") from None
    return task


def _find_data_file(config_json: dict, run_folder: Path | None) -> Path | None:
    """The config's `data_file` (relative to where training started): tried in, beside, then outside the run."""
    name = Path(str(_cfg(config_json, "data_file")))
    candidates = [name]
    if run_folder is not None and not name.is_absolute():
        candidates = [Path(run_folder) / name, Path(run_folder).parent / name, name]
    return next((c for c in candidates if c.is_file()), None)


def _read_train_exemplar0(path: Path, key: str, n_train: int) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"data file {path} is not a readable HDF5 file ({exc}); pass the run's features "
                         "with `--data FILE.h5`") from None
    with f:
        node = f.get(key)
        if not isinstance(node, h5py.Dataset) or node.ndim != 3:
            raise ValueError(f"data file {path} has no rank-3 dataset at '{key}' (classes, exemplars, dim); pass "
                             "the run's features with `--data FILE.h5`")
        if node.shape[0] < n_train:
            raise ValueError(f"data file {path} dataset '{key}' has {node.shape[0]} classes but the run trains on "
                             f"{n_train}; pass the run's features with `--data FILE.h5`")
        return np.asarray(node[:n_train, 0, :], np.float32)


def icl_dynamics_probe(
    config_json: dict,
    *,
    data: str | Path | None = None,
    train_exemplar0: str | Path | np.ndarray | None = None,
    run_folder: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """The paper's probe set (README section 8) for this run: 78,400 sequences for 50 classes, 8 pairs.

    The exemplar-0 vectors of the training classes come from `train_exemplar0` (a (n_train,
    dim) array or .npy file) or else from the HDF5 features: `data`, or the config's
    `data_file` found next to `run_folder`; if neither exists this raises, naming `--data`.
    Returns `examples` float32 (N, 3, dim), `labels` int32 (N, 3) (last = target),
    `correct_index` int32 (N,) and `classes` int32 (N, 3).
    """
    n_train = int(_cfg(config_json, "class_split")[0])
    if train_exemplar0 is not None:
        x = np.load(train_exemplar0) if isinstance(train_exemplar0, (str, Path)) else np.asarray(train_exemplar0)
        if x.ndim != 2 or x.shape[0] != n_train:
            raise ValueError(f"train_exemplar0 has shape {x.shape} but the run has {n_train} training classes; "
                             f"pass a ({n_train}, dim) array of exemplar 0 of each training class")
    else:
        if data is not None:
            path = Path(data)
            if not path.is_file():
                raise ValueError(f"data file {path} does not exist; pass the run's HDF5 features with `--data FILE.h5`")
        else:
            path = _find_data_file(config_json, None if run_folder is None else Path(run_folder))
            if path is None:
                where = f" (looked next to {run_folder})" if run_folder is not None else ""
                raise ValueError(
                    f"the run's config.json names data file '{_cfg(config_json, 'data_file')}', which was not "
                    f"found{where}; pass the features file with `--data FILE.h5`"
                )
        key = str(config_json.get("data_path_in_file") or "resnet18/224/feat")
        x = _read_train_exemplar0(path, key, n_train)
    pairs = icl_dynamics_label_pairs(config_json)["train"]
    return icl_dynamics_probe_set(x.astype(np.float32), pairs)
