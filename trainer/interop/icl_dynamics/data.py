"""Where an imported icl-dynamics run's exemplars come from, so its probes rebuild without the original files.

An icl-dynamics config names its features file relative to where training started; at import the
user gives it (`--data FILE.h5`), gives only the training classes' exemplar-0 vectors
(`--exemplars FILE.npy`, all the paper's probe set needs), or names the fixture README's
synthetic stand-in (`--data synthetic`: numpy seed 0 Gaussian clusters, bit-identical to the
file `make_synthetic_data.py` writes). `resolve_data_source` validates that choice and returns
the task's `data` section and the exemplar-0 vectors, which the import stores as
`RUN_DIR/probes/icl_dynamics_exemplar0.npy` so that `scalars compute` needs no flag later.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from ...tasks import synthetic_clusters

__all__ = ["DataSource", "resolve_data_source", "EXEMPLAR0_FILE", "SYNTHETIC", "synthetic_section"]

EXEMPLAR0_FILE = "probes/icl_dynamics_exemplar0.npy"  # relative to the run directory
SYNTHETIC = "synthetic"  # `--data synthetic`
_SYNTHETIC_SEED, _SYNTHETIC_NOISE = 0, 0.1  # fixtures README section 2
_FLAGS = ("pass the features file with --data FILE.h5, the training classes' exemplar-0 vectors with "
          "--exemplars FILE.npy, or --data synthetic for the fixture README's synthetic stand-in")


@dataclasses.dataclass(frozen=True)
class DataSource:
    """The task's `data` section, the (n_train, d_in) exemplar-0 vectors, and a line saying where they came from."""

    task_data: dict
    exemplar0: np.ndarray
    origin: str

    def record(self) -> dict:
        """What run.json keeps about the stored vectors."""
        return {"path": EXEMPLAR0_FILE, "shape": list(self.exemplar0.shape), "origin": self.origin,
                "sha256": hashlib.sha256(np.ascontiguousarray(self.exemplar0).tobytes()).hexdigest()}


def _h5_key(config_json: dict) -> str:
    return str(config_json.get("data_path_in_file") or "resnet18/224/feat")


def _splits(config_json: dict) -> tuple[int, int, int]:
    """(n_train classes, n_classes the splits span, n_exemplars the splits span)."""
    classes = [int(v) for v in config_json["class_split"]]
    exemplars = [int(v) for v in config_json["exemplar_split"]]
    return classes[0], sum(classes), sum(exemplars)


def synthetic_section(config_json: dict, d_in: int) -> dict:
    """The task `data` section of the synthetic stand-in sized by the run's splits (1623 x 5 x 512 for the fixtures)."""
    _, n_classes, n_exemplars = _splits(config_json)
    return {"source": "synthetic", "path": None, "h5_key": _h5_key(config_json), "seed": _SYNTHETIC_SEED,
            "n_classes": n_classes, "n_exemplars": n_exemplars, "dim": int(d_in), "noise": _SYNTHETIC_NOISE}


def _from_h5(path: Path, config_json: dict, d_in: int, flag: str) -> DataSource:
    import h5py

    key = _h5_key(config_json)
    n_train, n_classes, n_exemplars = _splits(config_json)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"data file {path} is not a readable HDF5 file ({exc}); {flag}") from None
    with f:
        node = f.get(key)
        shape = tuple(node.shape) if isinstance(node, h5py.Dataset) else None
        if shape is None or len(shape) != 3:
            raise ValueError(f"data file {path} has no rank-3 dataset at '{key}' (classes, exemplars, dim) "
                             f"(found {shape}); {flag}")
        if shape[2] != d_in or shape[0] < n_classes or shape[1] < n_exemplars:
            raise ValueError(f"data file {path} dataset '{key}' has shape {shape} but the run needs at least "
                             f"({n_classes}, {n_exemplars}, {d_in}) (class and exemplar splits, checkpoint input "
                             f"size); {flag}")
        exemplar0 = np.asarray(node[:n_train, 0, :], np.float32)
    section = {"source": "h5", "path": str(path.resolve()), "h5_key": key, "seed": 0, "n_classes": shape[0],
               "n_exemplars": shape[1], "dim": shape[2], "noise": 0.0}
    return DataSource(section, exemplar0, f"h5 file {path.resolve()} key {key}")


def _from_npy(path: Path, config_json: dict, d_in: int, fallback_section: dict) -> DataSource:
    n_train = _splits(config_json)[0]
    if not path.is_file():
        raise ValueError(f"exemplar file {path} does not exist; pass a .npy of shape ({n_train}, {d_in}) with "
                         "--exemplars FILE.npy")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"exemplar file {path} is not a readable .npy array ({exc}); pass a ({n_train}, {d_in}) "
                         "float array with --exemplars FILE.npy") from None
    if x.shape != (n_train, d_in) or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"exemplar file {path} holds {x.dtype} {x.shape} but the run needs exemplar 0 of its "
                         f"{n_train} training classes as a float ({n_train}, {d_in}) array; pass that with "
                         "--exemplars FILE.npy")
    return DataSource(fallback_section, np.asarray(x, np.float32), f"npy file {path.resolve()}")


def _find_named_file(config_json: dict, run_folder: Path) -> Path | None:
    name = Path(str(config_json.get("data_file") or ""))
    if not str(name) or str(name) == ".":
        return None
    candidates = [name] if name.is_absolute() else [run_folder / name, run_folder.parent / name, name]
    return next((c for c in candidates if c.is_file()), None)


def resolve_data_source(
    config_json: dict, run_folder: str | Path, d_in: int, *,
    data: str | Path | None = None, exemplars: str | Path | None = None,
) -> DataSource:
    """The run's exemplar source: `data` (an HDF5 file or "synthetic"), `exemplars` (.npy), or the config's file.

    Without either, the config's `data_file` is looked for in the run folder, beside it and in
    the current directory; if it is absent this raises, naming the flags that supply it. With
    `exemplars` only the paper's probe set can be rebuilt (the task keeps the config's file,
    or the synthetic stand-in is not assumed): evaluator probes (fsl_*) then need the file.
    """
    run_folder = Path(run_folder)
    if data is not None and exemplars is not None:
        raise ValueError("pass either --data or --exemplars, not both (--data already holds the exemplars)")
    if data is not None and str(data) == SYNTHETIC:
        section = synthetic_section(config_json, d_in)
        feats = synthetic_clusters(section["seed"], section["n_classes"], section["n_exemplars"], d_in, section["noise"])
        n_train = _splits(config_json)[0]
        return DataSource(section, np.ascontiguousarray(feats[:n_train, 0]),
                          f"synthetic stand-in (numpy seed {section['seed']}, noise {section['noise']})")
    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist; {_FLAGS}")
        return _from_h5(path, config_json, d_in, _FLAGS)
    named = _find_named_file(config_json, run_folder)
    if exemplars is not None:
        if named is not None:
            fallback = _from_h5(named, config_json, d_in, _FLAGS).task_data
        else:
            fallback = {"source": "h5", "path": str(config_json.get("data_file")), "h5_key": _h5_key(config_json),
                        "seed": 0, "n_classes": _splits(config_json)[1], "n_exemplars": _splits(config_json)[2],
                        "dim": int(d_in), "noise": 0.0}
        return _from_npy(Path(exemplars), config_json, d_in, fallback)
    if named is None:
        raise ValueError(
            f"the run's config.json names data file '{config_json.get('data_file')}', which was not found (looked in "
            f"{run_folder}, beside it and in the current directory); {_FLAGS}"
        )
    return _from_h5(named, config_json, d_in, _FLAGS)
