"""Exemplar arrays for the ICL classification task: an HDF5 file or seeded Gaussian clusters.

Both give float32 `(n_classes, n_exemplars, dim)` arrays, C order (classes x exemplars x features).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
from jaxtyping import Float

_SOURCES = ("synthetic", "h5")


def load_h5_dataset(path: str | Path, key: str = "resnet18/224/feat") -> Float[np.ndarray, "cls ex dim"]:
    """Read the rank-3 float dataset `key` (classes x exemplars x dim) from an HDF5 file as float32."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"exemplar file {str(path)!r} does not exist; pass the path of an HDF5 file.")
    with h5py.File(path, "r") as f:
        node = f.get(key)
        if not isinstance(node, h5py.Dataset):
            found: list[str] = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
            raise ValueError(
                f"HDF5 file {str(path)!r} has no dataset at key {key!r}; available datasets: "
                f"{found or 'none'}; pass one of them as the key."
            )
        if node.ndim != 3:
            raise ValueError(
                f"dataset {key!r} in {str(path)!r} has shape {node.shape}, expected rank 3 "
                "(classes, exemplars, dim); store it with that layout."
            )
        if not (np.issubdtype(node.dtype, np.floating) or np.issubdtype(node.dtype, np.integer)):
            raise ValueError(f"dataset {key!r} in {str(path)!r} has dtype {node.dtype}, expected a float type.")
        return np.ascontiguousarray(node[...], dtype=np.float32)


def synthetic_clusters(
    seed: int, n_classes: int, n_exemplars: int, dim: int, noise: float
) -> Float[np.ndarray, "cls ex dim"]:
    """Gaussian clusters: means m ~ N(0, I), exemplars m + noise * N(0, I), float32.

    Draw order with `numpy.random.default_rng(seed)`: one standard_normal((C, D)) for the means,
    then one standard_normal((C, E, D)); `feat = float32(m) + float32(noise) * float32(n)`. With
    (0, 1623, 5, 512, 0.1) this is exactly the icl-dynamics fixture data (README section 2).
    """
    for name, v in (("n_classes", n_classes), ("n_exemplars", n_exemplars), ("dim", dim)):
        if v < 1:
            raise ValueError(f"{name} must be positive, got {v}.")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}.")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)).astype(np.float32)
    noise_draw = rng.standard_normal((n_classes, n_exemplars, dim)).astype(np.float32)
    return (means[:, None, :] + np.float32(noise) * noise_draw).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ICLDataConfig:
    """Where the exemplar array comes from: `"synthetic"` clusters (seed, sizes, noise) or an `"h5"` file."""

    source: Literal["synthetic", "h5"] = "synthetic"
    path: str | None = None
    h5_key: str = "resnet18/224/feat"
    seed: int = 0
    n_classes: int = 256
    n_exemplars: int = 10
    dim: int = 64
    noise: float = 0.1

    def __post_init__(self):
        if self.source not in _SOURCES:
            raise ValueError(f"data source must be one of {_SOURCES}, got {self.source!r}; pick one of them.")
        if self.source == "h5" and not self.path:
            raise ValueError("data source 'h5' needs a path; set data.path to the HDF5 file.")


def load_exemplars(cfg: ICLDataConfig) -> Float[np.ndarray, "cls ex dim"]:
    """Materialize the exemplar array described by `cfg` (load once; pass it to the samplers)."""
    if cfg.source == "h5":
        return load_h5_dataset(cfg.path, cfg.h5_key)
    return synthetic_clusters(cfg.seed, cfg.n_classes, cfg.n_exemplars, cfg.dim, cfg.noise)
