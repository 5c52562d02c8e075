"""What run.json records: the full config, seeds, the effective model, package versions."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from typing import Any

import store

from .model import ModelConfig

PACKAGES = ("jax", "jaxlib", "equinox", "optax", "zarr", "xarray", "numpy", "derived-scalars")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# run coords under short names -> the config leaves they come from, first found wins (a leaf is
# found by its own name anywhere in the config, then in the rest of run.json)
COORD_KEYS: dict[str, tuple[str, ...]] = {
    "seed": ("init_seed", "seed"),
    "n_layers": ("n_layers",),
    "n_heads": ("n_heads",),
    "d_model": ("d_model",),
    "preset": ("preset",),
}


def _lookup(flat: Mapping[str, Any], key: str) -> Any:
    if key in flat:
        return flat[key]
    hits = [k for k in flat if k.endswith("." + key)]
    return flat[min(hits, key=len)] if hits else None


def run_coords(info: Mapping[str, Any]) -> dict[str, Any]:
    """The short run coords (`seed`, `n_layers`, ...) of a run.json's content, from its config; what
    `store.open_scalars` labels a run with in cross-run queries."""
    config = info.get("config", {})
    flat = store.flatten(config) if isinstance(config, Mapping) else {}
    rest = store.flatten({k: v for k, v in info.items() if k not in ("config", "coords")})
    out = {}
    for name, keys in COORD_KEYS.items():
        for key in keys:
            value = _lookup(flat, key)
            value = _lookup(rest, key) if value is None else value
            if value is not None:
                out[name] = value
                break
    return out


def run_info(config: dict, model_config: ModelConfig) -> dict:
    """The run.json content for a run trained by this project."""
    info = {
        "source": "scalars train",
        "config": config,
        "seeds": dict(config["seeds"]),
        "model": model_config.to_dict(),
        "versions": package_versions(),
        "step_unit": "optimizer steps",
    }
    return {**info, "coords": run_coords(info)}
