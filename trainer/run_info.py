"""What run.json records: the full config, seeds, the effective model, package versions."""

from __future__ import annotations

import importlib.metadata
import platform

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


def run_info(config: dict, model_config: ModelConfig) -> dict:
    """The run.json content for a run trained by this project."""
    return {
        "source": "scalars train",
        "config": config,
        "seeds": dict(config["seeds"]),
        "model": model_config.to_dict(),
        "versions": package_versions(),
        "step_unit": "optimizer steps",
    }
